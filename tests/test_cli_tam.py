"""`pathseg train tam`, `pathseg segment` with a TAM model, and `pathseg experiment tam`, end to end."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pathseg.train.tam_data import write_synthetic_tam


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pathseg", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_synthetic_tam(tmp_path_factory.mktemp("tam") / "data", counts={"train": 2, "val": 1, "test": 1},
                               size=64, upscale=2)


def test_train_then_segment_writes_tam_classes_and_population(data, tmp_path):
    r = run("train", "tam", "--data", str(data), "--out", str(tmp_path / "run"), "--arch", "unet", "--strategy",
            "instance", "--steps", "2", "--val-every", "2", "--batch-size", "2", "--patch", "64", "--embed-dim", "4",
            "--threads", "1")
    assert r.returncode == 0, r.stderr
    # Two steps teach the network nothing; with a foreground threshold of 0 every pixel is TAM,
    # so clustering, measuring and writing all run on real outputs of the trained network.
    cfg_path = tmp_path / "run" / "model" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["postprocess"]["fg_threshold"] = 0.0
    cfg_path.write_text(json.dumps(cfg))
    image = data / "test" / "images" / "test_0000.png"
    r = run("segment", str(image), "--model", str(tmp_path / "run"), "--out", str(tmp_path / "seg"), "--mpp", "0.25",
            "--large-threshold-um2", "50")
    assert r.returncode == 0, r.stderr
    folder = tmp_path / "seg" / "test_0000"
    with open(folder / "objects.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and {"size_class", "circularity", "mean_dab", "area_um2"} <= set(rows[0])
    for row in rows:  # the class follows the area and the threshold given on the command line
        assert int(row["size_class"]) == int(float(row["area_um2"]) >= 50)
    pop = json.loads((folder / "population.json").read_text())
    assert pop["count"] == len(rows) and pop["threshold_um2"] == 50
    assert pop["area_mm2"] == pytest.approx(128 * 128 * 0.25**2 / 1e6)
    assert (folder / "area_histogram.png").stat().st_size > 1000
    names = {f["properties"]["classification"]["name"] for f in json.loads((folder / "objects.geojson").read_text())["features"]}
    assert names <= {"TAM small", "TAM large"} and names
    run_json = json.loads((folder / "run.json").read_text())
    assert run_json["postprocess"]["embed_dim"] == 4


def test_bad_arch_is_one_line_exit_2(data, tmp_path):
    r = run("train", "tam", "--data", str(data), "--out", str(tmp_path / "r"), "--arch", "resnet")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "resnet" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_experiment_cli_writes_the_table(data, tmp_path):
    r = run("experiment", "tam", "--data", str(data), "--out", str(tmp_path / "exp"), "--models", "segnet",
            "--strategies", "weights", "--steps", "1", "--val-every", "1", "--batch-size", "2", "--patch", "64",
            "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "| SegNet | per-pixel weights |" in (tmp_path / "exp" / "tam_table.md").read_text()
    assert (tmp_path / "exp" / "tam_figure.png").is_file()


def test_builtin_tam_ihc_finds_the_tams_of_a_synthetic_test_image(data, tmp_path):
    from pathseg.io import read_label
    from pathseg.metrics import iou

    image = data / "test" / "images" / "test_0000.png"  # a test-split seed: never trained on
    r = run("segment", str(image), "--model", "tam-ihc", "--out", str(tmp_path / "seg"))
    assert r.returncode == 0, r.stderr
    folder = tmp_path / "seg" / "test_0000"
    pred = read_label(folder / "labels.png")
    truth = read_label(data / "test" / "labels" / "test_0000.png")
    assert iou(truth > 0, pred > 0) > 0.85
    assert json.loads((folder / "population.json").read_text())["threshold_um2"] == pytest.approx(60.39)
