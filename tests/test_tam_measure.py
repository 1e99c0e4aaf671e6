"""TAM morphometry and outputs: circularity, DAB, size classes, population summary, histogram, classes."""

from __future__ import annotations

import csv
import json
import logging
import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from pathseg.io.write import write_geojson
from pathseg.jobs import fingerprint, segment_files, write_result
from pathseg.measure import (
    COLUMNS,
    DEFAULT_LARGE_THRESHOLD_UM2,
    ObjectSpec,
    measure_instances,
    objects_with_threshold,
    population_summary,
    size_class,
    write_area_histogram,
)
from pathseg.pipeline import SegmentationResult
from pathseg.tiling import InferenceOptions
from pathseg.wsi import SlideOptions, segment_slide
from pathseg.wsi.outputs import GeoJsonStreamWriter, summarise_slide
from tests.wsi_helpers import PURPLE, colour_model, disc_slide

TAM = {"name": "TAM", "size_classes": {"threshold_um2": 50.0, "names": ["small", "large"]}}
SMALL = SlideOptions(inference=InferenceOptions(window=64, halo=16, batch_size=2, device="cpu"), tile=64, margin=32,
                     tissue=False, thumbnail=256)


def _disc(r: int) -> np.ndarray:
    yy, xx = np.mgrid[: 2 * r + 5, : 2 * r + 5]
    return ((yy - r - 2) ** 2 + (xx - r - 2) ** 2 <= r * r).astype(np.int32)


# --- measurements -------------------------------------------------------------------------


def test_new_columns_follow_the_old_ones():
    assert COLUMNS[-3:] == ("circularity", "mean_haematoxylin", "mean_dab")
    table = measure_instances(_disc(5))  # no image, no mpp
    assert list(table) == list(COLUMNS)
    assert np.isnan(table["mean_dab"]).all() and np.isfinite(table["circularity"]).all()


@pytest.mark.parametrize("r", [10, 20, 40])
def test_circularity_of_a_disc_is_near_one(r):
    # The perimeter is regionprops' (Benkrid-Crookes) one, which runs ~5% above 2 pi r on a
    # digital disc: measured circularity 0.916 (r=10), 0.908 (r=20), 0.908 (r=40).
    c = measure_instances(_disc(r))["circularity"][0]
    assert 0.88 < c < 0.95


@pytest.mark.parametrize("s", [10, 40, 100])
def test_circularity_of_a_square_tends_to_pi_over_4(s):
    labels = np.zeros((s + 4, s + 4), np.int32)
    labels[2:2 + s, 2:2 + s] = 1
    c = measure_instances(labels)["circularity"][0]
    # The perimeter joins the centres of the border pixels: 4 (s - 1), so 4 pi s^2 / (4 (s - 1))^2 exactly,
    # which tends to pi/4 (0.970 at s=10, 0.826 at s=40, 0.801 at s=100).
    assert c == pytest.approx(math.pi * s * s / (4 * (s - 1) ** 2), rel=1e-9)
    if s >= 40:
        assert abs(c - math.pi / 4) < 0.05


def test_circularity_is_nan_for_a_zero_perimeter():
    labels = np.zeros((5, 5), np.int32)
    labels[2, 2] = 1  # a single pixel: skimage's perimeter is 0
    assert np.isnan(measure_instances(labels)["circularity"][0])


def test_mean_dab_is_higher_on_brown_than_on_blue():
    image = np.full((20, 40, 3), 235, np.uint8)
    labels = np.zeros((20, 40), np.int32)
    labels[5:15, 5:15], image[5:15, 5:15] = 1, (150, 90, 40)  # DAB brown
    labels[5:15, 25:35], image[5:15, 25:35] = 2, (60, 70, 160)  # haematoxylin blue
    table = measure_instances(labels, image, mpp=0.5)
    assert table["mean_dab"][0] > table["mean_dab"][1] + 0.1
    assert table["mean_haematoxylin"][1] > table["mean_haematoxylin"][0] + 0.1


# --- size classes and summary -------------------------------------------------------------


def test_size_class_by_hand():
    got = size_class([10.0, 49.99, 50.0, 300.0, np.nan], 50.0)
    assert got.tolist() == [0, 0, 1, 1, -1]  # the threshold itself is large
    with pytest.raises(ValueError):
        size_class([1.0], 0.0)
    with pytest.raises(ValueError):
        size_class([1.0], float("nan"))


def test_population_summary_by_hand():
    # 1000 x 1000 px at 0.5 um/px = 500 um x 500 um = 0.25 mm^2.
    area_mm2 = 1000 * 1000 * 0.5**2 / 1e6
    table = {"id": np.arange(1, 6), "area_um2": np.array([10.0, 20.0, 80.0, 200.0, np.nan])}
    s = population_summary(table, area_mm2, 50.0)
    assert s["count"] == 5 and s["area_mm2"] == pytest.approx(0.25)
    assert s["density_per_mm2"] == pytest.approx(20.0)  # 5 objects / 0.25 mm^2
    assert (s["n_small"], s["n_large"], s["n_unknown"]) == (2, 2, 1)
    assert s["large_fraction"] == pytest.approx(0.5)  # of the objects with a known area
    assert s["density_small_per_mm2"] == pytest.approx(8.0) and s["density_large_per_mm2"] == pytest.approx(8.0)
    assert s["area_um2"]["n"] == 4 and s["area_um2"]["p50"] == pytest.approx(50.0)
    assert s["area_um2"]["mean"] == pytest.approx(77.5) and s["threshold_um2"] == 50.0
    unknown = population_summary(table, None, 50.0)
    assert unknown["density_per_mm2"] is None and unknown["area_mm2"] is None and "density_small_per_mm2" not in unknown
    empty = population_summary({"id": np.zeros(0), "area_um2": np.zeros(0)}, 1.0, 50.0)
    assert empty["count"] == 0 and empty["density_per_mm2"] == 0 and empty["large_fraction"] is None
    assert empty["area_um2"]["p50"] is None


def test_object_spec_from_config():
    assert ObjectSpec.from_config({}) == ObjectSpec("Nucleus") and not ObjectSpec.from_config(None).sized
    assert ObjectSpec.from_config({"name": "TAM"}).geojson_classes() == {}
    spec = ObjectSpec.from_config(TAM)
    assert spec.sized and spec.threshold_um2 == 50.0 and spec.names == ("small", "large")
    names = {k: v[0] for k, v in spec.geojson_classes().items()}
    assert names == {0: "TAM small", 1: "TAM large", -1: "TAM"}
    colours = {tuple(v[1]) for v in spec.geojson_classes().values()}
    assert len(colours) == 3
    assert ObjectSpec.from_config({"name": "TAM", "size_classes": {}}).threshold_um2 == DEFAULT_LARGE_THRESHOLD_UM2
    assert ObjectSpec.from_config(TAM, threshold_um2=120.0).threshold_um2 == 120.0  # an override wins
    assert ObjectSpec.from_config({}, threshold_um2=30.0).sized  # and adds size classes
    with pytest.raises(ValueError):
        ObjectSpec.from_config({"size_classes": {"names": ["a", "b", "c"]}})
    with pytest.raises(ValueError):
        ObjectSpec.from_config({"size_classes": {"threshold_um2": -1}})
    updated = objects_with_threshold({"name": "TAM"}, 75.0)
    assert updated == {"name": "TAM", "size_classes": {"threshold_um2": 75.0, "names": ["small", "large"]}}


# --- histogram ----------------------------------------------------------------------------


def test_area_histogram_png_is_written_and_readable(tmp_path):
    rng = np.random.default_rng(0)
    area = np.concatenate([rng.lognormal(3.5, 0.4, 200), [np.nan]])
    path = tmp_path / "hist.png"
    assert write_area_histogram(path, area, 50.0, "test slide")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (600, 400)
        pixels = np.asarray(im.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # something was drawn
    assert write_area_histogram(tmp_path / "plain.png", area, None)  # no threshold: one colour


def test_area_histogram_skipped_with_a_log_line_when_no_area(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="pathseg.measure.population"):
        assert not write_area_histogram(tmp_path / "none.png", np.array([np.nan, np.nan]), 50.0)
        assert not write_area_histogram(tmp_path / "empty.png", np.zeros(0), 50.0)
    assert not (tmp_path / "none.png").exists() and not (tmp_path / "empty.png").exists()
    assert "no object with a known area" in caplog.text


# --- GeoJSON classes ----------------------------------------------------------------------


def _two_objects() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    labels = np.zeros((40, 60), np.int32)
    labels[5:10, 5:10] = 1  # 25 px at 0.5 um/px: 6.25 um^2 -> small
    labels[5:35, 20:50] = 2  # 900 px: 225 um^2 -> large
    return labels, measure_instances(labels, mpp=0.5)


def test_write_geojson_classes_by_size(tmp_path):
    labels, table = _two_objects()
    plain = tmp_path / "plain.geojson"
    write_geojson(plain, labels, table)
    spec = ObjectSpec.from_config(TAM)
    table = dict(table, size_class=size_class(table["area_um2"], spec.threshold_um2))
    sized = tmp_path / "sized.geojson"
    assert write_geojson(sized, labels, table, classification=spec.name, classes=spec.geojson_classes()) == 2
    before = json.loads(plain.read_text())["features"]
    after = json.loads(sized.read_text())["features"]
    assert [f["properties"]["classification"]["name"] for f in after] == ["TAM small", "TAM large"]
    assert after[0]["properties"]["classification"]["color"] != after[1]["properties"]["classification"]["color"]
    # Measurement names are exactly those of a nuclei run: the class is not a measurement.
    for b, a in zip(before, after):
        assert a["properties"]["measurements"] == b["properties"]["measurements"]
        assert b["properties"]["classification"]["name"] == "Nucleus"
    # Unknown area (no mpp): the plain object name.
    unknown = dict(measure_instances(labels), size_class=np.array([-1, -1]))
    write_geojson(tmp_path / "u.geojson", labels, unknown, classification="TAM", classes=spec.geojson_classes())
    feats = json.loads((tmp_path / "u.geojson").read_text())["features"]
    assert {f["properties"]["classification"]["name"] for f in feats} == {"TAM"}


def test_stream_writer_classes_match_write_geojson(tmp_path):
    labels, table = _two_objects()
    spec = ObjectSpec.from_config(TAM)
    codes = size_class(table["area_um2"], spec.threshold_um2)
    with GeoJsonStreamWriter(tmp_path / "s.geojson", classification=spec.name, classes=spec.geojson_classes()) as geo:
        rings = [np.array([[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]], float)] * 2
        geo.add(table["id"], rings, {"area_um2": table["area_um2"]}, codes)
    feats = json.loads((tmp_path / "s.geojson").read_text())["features"]
    assert [f["properties"]["classification"]["name"] for f in feats] == ["TAM small", "TAM large"]
    assert all(set(f["properties"]["measurements"]) == {"area_um2"} for f in feats)
    with pytest.raises(ValueError):
        with GeoJsonStreamWriter(tmp_path / "bad.geojson", classes=spec.geojson_classes()) as geo:
            geo.add(table["id"], rings, None, codes[:1])


# --- per-image outputs --------------------------------------------------------------------


def _result(mpp: float | None) -> tuple[SegmentationResult, np.ndarray]:
    labels, _ = _two_objects()
    image = np.full(labels.shape + (3,), 200, np.uint8)
    return SegmentationResult(labels, measure_instances(labels, image, mpp), mpp, mpp is None), image


def test_image_outputs_without_size_classes_are_as_for_nuclei(tmp_path):
    result, image = _result(0.5)
    write_result(tmp_path / "a", image, result, {"input": "a.png"}, objects={})
    files = {p.name for p in (tmp_path / "a").iterdir()}
    assert "population.json" not in files and "area_histogram.png" not in files
    with open(tmp_path / "a" / "objects.csv") as f:
        assert next(csv.reader(f)) == list(COLUMNS)
    feats = json.loads((tmp_path / "a" / "objects.geojson").read_text())["features"]
    assert {f["properties"]["classification"]["name"] for f in feats} == {"Nucleus"}


def test_image_outputs_with_size_classes(tmp_path):
    result, image = _result(0.5)
    write_result(tmp_path / "a", image, result, {"input": "/data/a.png"}, objects=TAM)
    folder = tmp_path / "a"
    with open(folder / "objects.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [*COLUMNS, "size_class"]
    assert [r["size_class"] for r in rows] == ["0", "1"]
    pop = json.loads((folder / "population.json").read_text())
    # 40 x 60 px at 0.5 um/px = 600 um^2 = 6e-4 mm^2; 2 objects -> 3333.3 per mm^2.
    assert pop["area_mm2"] == pytest.approx(6e-4) and pop["density_per_mm2"] == pytest.approx(2 / 6e-4)
    assert (pop["n_small"], pop["n_large"], pop["threshold_um2"], pop["name"]) == (1, 1, 50.0, "TAM")
    with Image.open(folder / "area_histogram.png") as im:
        assert im.format == "PNG"
    feats = json.loads((folder / "objects.geojson").read_text())["features"]
    assert [f["properties"]["classification"]["name"] for f in feats] == ["TAM small", "TAM large"]
    assert json.loads((folder / "run.json").read_text())["n_objects"] == 2


def test_image_with_unknown_pixel_size_has_no_density_nor_histogram(tmp_path):
    result, image = _result(None)
    write_result(tmp_path / "a", image, result, {"input": "a.png"}, objects=TAM)
    pop = json.loads((tmp_path / "a" / "population.json").read_text())
    assert pop["area_mm2"] is None and pop["density_per_mm2"] is None and pop["n_unknown"] == 2
    assert not (tmp_path / "a" / "area_histogram.png").exists()


def test_segment_files_uses_the_model_objects_and_fingerprints_them(tmp_path):
    image, truth = disc_slide(96, 128, 6, seed=3, radius=(4, 9))
    Image.fromarray(image).save(tmp_path / "a.png")
    lm = colour_model(0.5)
    opts = InferenceOptions(window=64, halo=8, batch_size=2, device="cpu", multiple=1)
    assert "objects" not in fingerprint(tmp_path / "a.png", lm, opts, 0.5)  # nuclei fingerprints unchanged
    lm.config = replace(lm.config, objects=objects_with_threshold({"name": "TAM"}, 60.0))
    report = segment_files([tmp_path / "a.png"], lm, tmp_path / "out", opts, mpp=0.5)
    assert report.n_failed == 0 and report.outcomes[0].n_objects == truth.max()
    folder = tmp_path / "out" / "a"
    pop = json.loads((folder / "population.json").read_text())
    areas = np.bincount(truth.ravel())[1:] * 0.25
    assert pop["threshold_um2"] == 60.0
    assert (pop["n_small"], pop["n_large"]) == (int((areas < 60).sum()), int((areas >= 60).sum()))
    assert json.loads((folder / "run.json").read_text())["fingerprint"]["objects"]["size_classes"]["threshold_um2"] == 60
    # Another threshold is another result: the finished folder is not silently reused.
    lm.config = replace(lm.config, objects=objects_with_threshold({"name": "TAM"}, 70.0))
    again = segment_files([tmp_path / "a.png"], lm, tmp_path / "out", opts, mpp=0.5)
    assert again.outcomes[0].status == "failed" and "--overwrite" in again.outcomes[0].error


# --- slides -------------------------------------------------------------------------------


def test_slide_summary_has_the_population_block(tmp_path):
    image, truth = disc_slide(200, 260, 25, seed=4, radius=(4, 11))
    lm = colour_model(0.5)
    lm.config = replace(lm.config, objects=TAM)
    res = segment_slide(image, lm, out=tmp_path / "out", mpp=0.5, options=SMALL)
    folder = res.folder
    summary = json.loads((folder / "summary.json").read_text())
    pop = summary["population"]
    areas = np.bincount(truth.ravel())[1:] * 0.25
    assert pop["count"] == truth.max() == summary["n_objects"]
    assert (pop["n_small"], pop["n_large"]) == (int((areas < 50).sum()), int((areas >= 50).sum()))
    assert pop["n_small"] > 0 and pop["n_large"] > 0
    assert pop["area_mm2"] == pytest.approx(summary["tissue_area_mm2"])
    assert pop["density_per_mm2"] == pytest.approx(summary["density_per_mm2"])
    assert summary["counts_by"]["size_class"] == {"0": pop["n_small"], "1": pop["n_large"]}
    assert "size_class" not in summary["medians"] and "circularity" in summary["medians"]
    assert (folder / "area_histogram.png").is_file()
    with open(folder / "objects.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [*COLUMNS, "size_class"] and len(rows) == truth.max()
    feats = json.loads((folder / "objects.geojson").read_text())["features"]
    names = [f["properties"]["classification"]["name"] for f in feats]
    assert names.count("TAM small") == pop["n_small"] and names.count("TAM large") == pop["n_large"]
    assert all("size_class" not in f["properties"]["measurements"] for f in feats)
    assert res.table["size_class"].tolist() == [int(r["size_class"]) for r in rows]


def test_slide_without_size_classes_is_unchanged(tmp_path):
    image, _ = disc_slide(128, 128, 6, seed=5)
    res = segment_slide(image, colour_model(0.5), out=tmp_path / "out", mpp=0.5, options=SMALL)
    summary = json.loads((res.folder / "summary.json").read_text())
    assert "population" not in summary and not (res.folder / "area_histogram.png").exists()
    with open(res.folder / "objects.csv") as f:
        assert next(csv.reader(f)) == list(COLUMNS)
    feats = json.loads((res.folder / "objects.geojson").read_text())["features"]
    assert {f["properties"]["classification"]["name"] for f in feats} == {"Nucleus"}
    assert "size_class" not in res.table


def test_summarise_slide_population_with_unknown_tissue():
    table = {"id": np.arange(1, 4), "area_um2": np.array([10.0, 100.0, 200.0])}
    summary = summarise_slide(table, None, size_threshold_um2=50.0)
    assert summary["population"]["density_per_mm2"] is None and summary["population"]["n_large"] == 2
    assert "population" not in summarise_slide(table, 1e6)


# --- command line -------------------------------------------------------------------------


def test_cli_large_threshold_overrides_the_model(tmp_path):
    import torch

    from pathseg.models import ModelConfig, UNet, save_model

    torch.manual_seed(0)
    net = UNet(width=4, levels=3).eval()
    model = tmp_path / "tam"
    save_model(model, net, ModelConfig(arch_kwargs=net.config, mpp=0.5, postprocess={"min_area_px": 1}, objects=TAM))
    Image.fromarray(np.full((64, 64, 3), PURPLE, np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pathseg", "segment", str(tmp_path / "a.png"), "--model", str(model), "--out", str(out),
           "--mpp", "0.5", "--window", "64", "--halo", "8", "--device", "cpu", "--large-threshold-um2", "123.5"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "a" / "population.json").read_text())["threshold_um2"] == 123.5
    with open(out / "a" / "objects.csv") as f:
        assert next(csv.reader(f))[-1] == "size_class"
    bad = subprocess.run(cmd[:-1] + ["-3"], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "--large-threshold-um2" in bad.stderr
