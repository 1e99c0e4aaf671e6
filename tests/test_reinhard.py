"""Reinhard colour normalisation: statistics moved to the target, glass kept, model-config hook."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from pathseg.errors import InputError
from pathseg.stain.reinhard import lab_stats, make_normaliser, reinhard


def _tissue_image() -> np.ndarray:
    # Real IHC shipped by scikit-image, with a patch of white glass pasted in.
    img = data.immunohistochemistry()[:200, :200].copy()
    img[:40, :40] = 250
    return img


def test_reinhard_moves_tissue_stats_to_target():
    img = _tissue_image()
    target = {"mean": [60.0, 20.0, -10.0], "std": [12.0, 6.0, 5.0]}
    out = reinhard(img, target)
    got = lab_stats(out)
    np.testing.assert_allclose(got["mean"], target["mean"], atol=1.5)
    np.testing.assert_allclose(got["std"], target["std"], rtol=0.12)


def test_reinhard_leaves_glass_and_identity():
    img = _tissue_image()
    out = reinhard(img, {"mean": [40.0, 30.0, 0.0], "std": [10.0, 5.0, 5.0]})
    np.testing.assert_allclose(out[:40, :40], img[:40, :40] / 255.0, atol=2e-3)
    same = reinhard(img, lab_stats(img))  # the image's own statistics: (almost) no change
    assert np.abs(same - img / 255.0).max() < 0.02


def test_make_normaliser_from_model_config():
    img = _tissue_image()
    assert make_normaliser({}, img) is None and make_normaliser(None, img) is None
    norm = make_normaliser({"kind": "reinhard", "target": {"mean": [60, 10, 0], "std": [10, 5, 5]}}, img)
    out = norm(img[50:150, 50:150])
    assert out.dtype == np.uint8 and out.shape == (100, 100, 3)
    # Source statistics are fixed at construction: a tile is mapped like the whole image.
    whole = norm(img)
    np.testing.assert_array_equal(out, whole[50:150, 50:150])
    with pytest.raises(InputError, match="normalise.kind"):
        make_normaliser({"kind": "macenko"}, img)
    with pytest.raises(InputError, match="target.std"):
        make_normaliser({"kind": "reinhard", "target": {"mean": [1, 2, 3], "std": [1, 0, 1]}}, img)
