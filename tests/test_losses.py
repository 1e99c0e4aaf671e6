"""The weighted-background loss of the partial-annotation paper."""

from __future__ import annotations

import math

import numpy as np
import torch

from pathseg.losses import background_weight_map, create_loss, l2_penalty
from pathseg.models import UNet
from pathseg.stain import background_cluster
from pathseg.train.patches import drop_annotations


def test_weight_map_hand_case():
    ann = np.zeros((1, 12), bool)
    ann[0, 0] = True  # one annotated pixel at x = 0; distance d = x
    m = background_weight_map(ann, None, alpha=2, beta=0.5, lam=0.5)
    assert m[0, 0] == 1.0  # annotated
    assert m[0, 1] == 1.0 and m[0, 2] == 1.0  # d <= alpha
    assert math.isclose(m[0, 3], math.exp(-0.5 * 1), rel_tol=1e-6)
    assert math.isclose(m[0, 6], math.exp(-0.5 * 4), rel_tol=1e-6)
    bg = np.zeros((1, 12), bool)
    bg[0, 8:] = True
    m2 = background_weight_map(ann, bg, alpha=2, beta=0.5, lam=0.5)
    # m_hat = max(m, lambda * b): the background cluster lifts far pixels to lambda.
    assert m2[0, 10] == 0.5 and math.isclose(m2[0, 3], m[0, 3], rel_tol=1e-6)


def test_no_annotation_means_only_background_cluster_counts():
    m = background_weight_map(np.zeros((4, 4), bool), np.eye(4, dtype=bool), lam=0.5)
    assert set(np.unique(m)) == {0.0, 0.5}


def test_weighted_loss_value_and_gradient():
    logits = torch.zeros(1, 3, 1, 2, requires_grad=True)
    target = torch.tensor([[[0, 1]]])
    weight = torch.tensor([[[0.0, 1.0]]])
    loss = create_loss("weighted_ce")(logits, target, weight)
    # Uniform logits: CE = log 3 per pixel; pixel 0 has weight 0 -> mean = log3 / 2.
    assert math.isclose(loss.item(), math.log(3) / 2, rel_tol=1e-6)
    loss.backward()
    assert torch.all(logits.grad[0, :, 0, 0] == 0)  # zero weight: no pull at all
    g = logits.grad[0, :, 0, 1]
    assert g[1] < 0 and g[0] > 0 and g[2] > 0  # pushes towards the target class
    plain = create_loss("ce")(logits, target, weight)
    assert math.isclose(plain.item(), math.log(3), rel_tol=1e-6)


def test_l2_penalty_counts_conv_weights_only():
    net = UNet(width=2, levels=2)
    expected = sum(m.weight.pow(2).sum().item() for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)))
    assert math.isclose(l2_penalty(net).item(), expected, rel_tol=1e-5)


def test_background_cluster_is_the_larger_stain_cluster():
    from tests.conftest import synthetic_nuclei

    img, lab = synthetic_nuclei(96, n=6, seed=3)
    bg = background_cluster(img, erosion_radius=1)
    assert bg[lab == 0].mean() > 0.9 and bg[lab > 0].mean() < 0.05


def test_drop_annotations_keeps_a_fraction_of_whole_objects():
    lab = np.repeat(np.arange(1, 201), 5).reshape(40, 25)
    kept = drop_annotations(lab, 0.5, np.random.default_rng(0))
    ids = np.unique(kept[kept > 0])
    assert 70 < len(ids) < 130
    for i in ids[:20]:
        assert np.array_equal(kept == i, lab == i)  # whole objects, never parts
