"""TAM losses: De Brabandere discriminative loss, the TAM training loss, and the per-pixel weight maps."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from pathseg.losses import (
    DiscriminativeLoss,
    WeightMapCache,
    WeightMapConfig,
    create_loss,
    instance_weight_map,
    separation_target,
)


def _emb(values: list[list[float]]) -> torch.Tensor:
    """(1, E, 1, W) embedding from per-pixel vectors."""
    return torch.tensor(values, dtype=torch.float64).T[None, :, None, :].contiguous()


def _reference_terms(emb: torch.Tensor, inst: torch.Tensor, dv: float, dd: float) -> dict[str, float]:
    """The De Brabandere formulas with plain loops, as written in the paper."""
    per = {"var": [], "dist": [], "reg": []}
    for b in range(emb.shape[0]):
        ids = [int(i) for i in torch.unique(inst[b]) if i > 0]
        if not ids:
            continue
        mus, var = [], []
        for i in ids:
            x = emb[b][:, inst[b] == i].T
            mu = x.mean(0)
            mus.append(mu)
            var.append(sum(max(0.0, float((mu - xi).norm()) - dv) ** 2 for xi in x) / len(x))
        c = len(ids)
        per["var"].append(sum(var) / c)
        pairs = [max(0.0, 2 * dd - float((mus[a] - mus[z]).norm())) ** 2 for a in range(c) for z in range(c) if a != z]
        per["dist"].append(sum(pairs) / (c * (c - 1)) if c > 1 else 0.0)
        per["reg"].append(sum(float(m.norm()) for m in mus) / c)
    return {k: sum(v) / len(v) for k, v in per.items()}


def test_tight_far_clusters_cost_only_the_regulariser():
    emb = _emb([[0, 0], [0, 0], [10, 0], [10, 0]])
    inst = torch.tensor([[[1, 1, 2, 2]]])
    loss = DiscriminativeLoss()
    t = loss.terms(emb, inst)
    assert t["var"].item() == 0 and t["dist"].item() == 0
    assert math.isclose(t["reg"].item(), 5.0)  # mean of ||(0,0)|| and ||(10,0)||
    assert math.isclose(loss(emb, inst).item(), 0.001 * 5.0)


def test_one_dimensional_toy_by_hand():
    # Instance 5: pixels 0 and 2 -> mu 1, each 1 from it: [1 - 0.5]^2 = 0.25. Instance 9: pixel 3 alone.
    # Means 2 apart: [3 - 2]^2 = 1 for both ordered pairs, / (2 * 1). reg = (1 + 3) / 2. Background ignored.
    emb = _emb([[0], [2], [3], [-40]])
    inst = torch.tensor([[[5, 5, 9, 0]]])
    loss = DiscriminativeLoss(delta_v=0.5, delta_d=1.5, alpha=1.0, beta=1.0, gamma=0.001)
    t = loss.terms(emb, inst)
    assert math.isclose(t["var"].item(), 0.125)
    assert math.isclose(t["dist"].item(), 1.0)
    assert math.isclose(t["reg"].item(), 2.0)
    assert math.isclose(loss(emb, inst).item(), 0.125 + 1.0 + 0.002)
    weighted = DiscriminativeLoss(alpha=2.0, beta=3.0, gamma=0.5)(emb, inst)
    assert math.isclose(weighted.item(), 2 * 0.125 + 3 * 1.0 + 0.5 * 2.0)


def test_two_dimensional_toy_by_hand():
    # mu_1 = (0, 0) with pixels at distance 1 (hinge 0.5^2); mu_2 = (3, 4), 5 away: beyond 2 dd = 3.
    emb = _emb([[1, 0], [-1, 0], [3, 4]])
    inst = torch.tensor([[[1, 1, 2]]])
    t = DiscriminativeLoss().terms(emb, inst)
    assert math.isclose(t["var"].item(), 0.25 / 2)
    assert t["dist"].item() == 0
    assert math.isclose(t["reg"].item(), 2.5)


def test_vectorised_matches_the_formulas_over_a_batch():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(3, 4, 6, 7, generator=g, dtype=torch.float64)
    inst = torch.randint(0, 5, (3, 6, 7), generator=g) * 7  # non-consecutive ids, shared across images
    inst[1] = 0  # an image without instances does not count in the average
    inst[2] = torch.where(inst[2] > 0, 3, 0)  # one instance: no pair
    t = DiscriminativeLoss(delta_v=0.3, delta_d=1.0).terms(emb, inst)
    ref = _reference_terms(emb, inst, 0.3, 1.0)
    for k in ("var", "dist", "reg"):
        assert math.isclose(t[k].item(), ref[k], rel_tol=1e-9), k


def test_instances_of_different_images_are_not_pushed_apart():
    emb = torch.zeros(2, 2, 1, 2, dtype=torch.float64)
    inst = torch.ones(2, 1, 2, dtype=torch.long)  # same id, same embedding, but two images
    assert DiscriminativeLoss().terms(emb, inst)["dist"].item() == 0


def test_no_instance_gives_zero_with_gradient():
    emb = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = DiscriminativeLoss()(emb, torch.zeros(2, 4, 4, dtype=torch.long))
    assert loss.item() == 0 and loss.requires_grad
    loss.backward()
    assert torch.all(emb.grad == 0)


def test_gradcheck():
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    inst = torch.tensor([[[1, 1, 2], [1, 2, 2], [0, 3, 3]], [[4, 4, 4], [0, 0, 6], [6, 6, 0]]])
    # Margins chosen so that every hinge is active or clearly inactive (no kink within eps).
    loss = DiscriminativeLoss(delta_v=0.1, delta_d=2.0, gamma=0.1)
    assert torch.autograd.gradcheck(lambda e: loss(e, inst), (emb,), eps=1e-6, atol=1e-5)


def test_registry_builds_the_losses():
    d = create_loss("discriminative", delta_v=0.2)
    assert isinstance(d, DiscriminativeLoss) and d.delta_v == 0.2
    assert create_loss("tam", strategy="instance", disc={"delta_d": 2.0}).disc.delta_d == 2.0


def test_tam_loss_strategies():
    g = torch.Generator().manual_seed(2)
    out = torch.randn(2, 2 + 3, 4, 4, generator=g, requires_grad=True)
    target = torch.randint(0, 2, (2, 4, 4), generator=g)
    weight = torch.rand(2, 4, 4, generator=g) * 3
    inst = target * torch.randint(1, 3, (2, 4, 4), generator=g)
    ce = F.cross_entropy(out[:, :2], target)
    base = create_loss("tam", strategy="baseline")(out, target, weight, inst)
    assert torch.isclose(base["loss"], ce) and base["disc"].item() == 0
    w = create_loss("tam", strategy="weights")(out, target, weight)
    assert torch.isclose(w["ce"], (F.cross_entropy(out[:, :2], target, reduction="none") * weight).mean())
    ins = create_loss("tam", strategy="instance")(out, target, None, inst)
    disc = DiscriminativeLoss()(out[:, 2:], inst)
    assert torch.isclose(ins["ce"], ce) and torch.isclose(ins["disc"], disc)
    assert torch.isclose(ins["loss"], ce + disc)
    ins["loss"].backward()
    assert out.grad[:, 2:].abs().sum() > 0  # the embedding channels learn
    with pytest.raises(ValueError):
        create_loss("tam", strategy="weights")(out, target)
    with pytest.raises(ValueError):
        create_loss("tam", strategy="instance")(out, target)
    with pytest.raises(ValueError):
        create_loss("tam", strategy="instance")(out[:, :2], target, None, inst)
    with pytest.raises(ValueError):
        create_loss("tam", strategy="nope")


def _two_squares(gap: int) -> np.ndarray:
    lab = np.zeros((20, 40), np.int32)
    lab[5:13, 3:11] = 1  # 8 x 8, columns 3..10
    lab[5:13, 11 + gap:19 + gap] = 2
    return lab


def test_weight_map_two_squares_six_px_apart():
    lab = _two_squares(6)  # background columns 11..16 between them
    w = instance_weight_map(lab, WeightMapConfig())
    assert w.dtype == np.float32 and w.shape == lab.shape
    assert np.all(w[5:13, 11:17] == 3.0)  # d1 + d2 = 7 < 10 everywhere in the gap
    assert w[3, 13] == 3.0  # above the gap: 3.6 + 4.5 < 10
    assert w[0, 13] == 1.0 and w[0, 0] == 1.0 and w[19, 39] == 1.0  # far background
    rim = np.zeros(lab.shape, bool)
    for sl in ndi.find_objects(lab):
        rim[sl] = True
        rim[sl[0].start + 1:sl[0].stop - 1, sl[1].start + 1:sl[1].stop - 1] = False
    assert np.all(w[rim] == 0.5) and np.all(w[(lab > 0) & ~rim] == 1.0)
    far = instance_weight_map(_two_squares(12), WeightMapConfig())  # 12 px apart: d1 + d2 = 13
    assert not np.any(far == 3.0)


def test_touching_squares_get_a_separation_line():
    lab = _two_squares(0)  # columns 3..10 and 11..18 touch
    t = separation_target(lab, 1)
    assert t.dtype == np.uint8 and set(np.unique(t)) == {0, 1}
    assert np.all(t[5:13, 10] == 0)  # the line: one column, on the lower id's side
    assert np.all(t[5:13, 3:10] == 1) and np.all(t[5:13, 11:19] == 1)
    assert ndi.label(t, structure=np.ones((3, 3)))[1] == 2  # apart even with 8-connectivity
    w = instance_weight_map(lab)
    assert np.all(w[5:13, 10] == 3.0)  # the line is background between close instances
    assert np.all(w[6:12, 11] == 1.0)  # beside the line is a contact, not an uncertain outline: no rim
    assert np.all(w[5:13, 18] == 0.5)  # the outer edge is


def _reference_gap(lab: np.ndarray, gap: float) -> np.ndarray:
    """Background pixels with d1 + d2 < gap by one full EDT per instance (the slow, obvious way)."""
    target = separation_target(lab, 1).astype(bool)
    sep = np.where(target, lab, 0)
    ids = [i for i in np.unique(sep) if i > 0]
    d = np.sort(np.stack([ndi.distance_transform_edt(sep != i) for i in ids]), axis=0)
    return ~target & (d[0] + d[1] < gap)


def _discs(size: int, n: int, seed: int, radius: tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    lab = np.zeros((size, size), np.int32)
    for k in range(1, n + 1):
        r = int(rng.integers(*radius))
        cy, cx = rng.integers(0, size, 2)
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    return lab


def test_gap_weights_match_the_per_instance_reference():
    lab = _discs(80, 14, seed=3, radius=(3, 9))
    w = instance_weight_map(lab, WeightMapConfig(gap_px=10.0))
    assert np.array_equal(w == 3.0, _reference_gap(lab, 10.0))


def test_weight_map_is_fast_on_many_instances():
    lab = _discs(1000, 340, seed=0, radius=(8, 20))
    assert len(np.unique(lab)) > 300
    t0 = time.perf_counter()
    instance_weight_map(lab)
    assert time.perf_counter() - t0 < 2.0  # ~0.2 s measured; loose for a shared machine


def test_empty_label_map():
    assert np.all(instance_weight_map(np.zeros((5, 5), np.int32)) == 1.0)
    assert not separation_target(np.zeros((5, 5), np.int32)).any()


def test_cache_computes_once(tmp_path):
    lab = _two_squares(6)
    cache = WeightMapCache()
    t1, w1 = cache.get(lab)
    t2, w2 = cache.get(lab.copy())
    assert cache.computed == 1 and t2 is t1 and w2 is w1
    assert not w1.flags.writeable  # shared between calls
    cache.get(lab, WeightMapConfig(gap_weight=5.0))
    assert cache.computed == 2


def test_disk_cache_round_trip(tmp_path):
    lab = _two_squares(3)
    first = WeightMapCache(tmp_path / "wm")
    t1, w1 = first.get(lab)
    assert len(list((tmp_path / "wm").glob("*.npz"))) == 1
    second = WeightMapCache(tmp_path / "wm")
    t2, w2 = second.get(lab)
    assert second.computed == 0  # read back from disk
    assert np.array_equal(t1, t2) and np.array_equal(w1, w2) and w2.dtype == np.float32 and t2.dtype == np.uint8
