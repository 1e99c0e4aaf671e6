"""The in-memory API: pathseg.load_model + pathseg.segment."""

from __future__ import annotations

import numpy as np
import torch

import pathseg
from pathseg.models import ModelConfig, UNet, save_model
from tests.conftest import synthetic_nuclei


def _model(tmp_path, mpp=0.25):
    torch.manual_seed(0)
    net = UNet(width=4, levels=3).eval()
    save_model(tmp_path / "m", net, ModelConfig(arch_kwargs=net.config, mpp=mpp, postprocess={"min_area_px": 1}))
    return pathseg.load_model(tmp_path / "m")


def test_segment_array_returns_labels_and_table(tmp_path):
    lm = _model(tmp_path)
    img, _ = synthetic_nuclei(80)
    res = pathseg.segment(img, lm, mpp=0.25)
    assert res.labels.shape == (80, 80) and res.labels.dtype == np.int32
    n = int(res.labels.max())
    assert len(res.table["id"]) == n
    assert not res.mpp_assumed and np.all(np.isfinite(res.table["area_um2"]))


def test_unknown_pixel_size_leaves_micron_columns_empty(tmp_path):
    lm = _model(tmp_path)
    img, _ = synthetic_nuclei(80)
    res = pathseg.segment(img, lm)
    assert res.mpp_assumed and res.mpp is None
    if len(res.table["id"]):
        assert np.all(np.isnan(res.table["area_um2"]))


def test_resampling_returns_the_input_grid(tmp_path):
    # Image at 0.5 um/px, model at 0.25: the network runs on a 2x upsampled copy, but the
    # labels come back on the image's own 60x70 grid.
    lm = _model(tmp_path, mpp=0.25)
    img, _ = synthetic_nuclei(70)
    res = pathseg.segment(img[:60], lm, mpp=0.5)
    assert res.labels.shape == (60, 70)
    assert res.mpp == 0.5
