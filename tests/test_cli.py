"""The `pathseg` command line, end to end on small images."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pathseg.models import ModelConfig, UNet, list_builtin, save_model
from tests.conftest import synthetic_nuclei


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pathseg", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A small UNet with random weights, saved as a pathseg model folder."""
    import torch

    torch.manual_seed(0)
    net = UNet(width=4, levels=3).eval()
    folder = tmp_path_factory.mktemp("m") / "tiny"
    save_model(folder, net, ModelConfig(arch_kwargs=net.config, mpp=0.5, postprocess={"min_area_px": 1}))
    return folder


def test_segment_writes_every_output_and_resumes(tmp_path, tiny_model):
    img, _ = synthetic_nuclei(96)
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(img).save(tmp_path / "b.png")
    out = tmp_path / "out"
    r = run("segment", str(tmp_path / "*.png"), "--model", str(tiny_model), "--out", str(out), "--mpp", "0.5", "--window", "64", "--halo", "8")
    assert r.returncode == 0, r.stderr
    for stem in ("a", "b"):
        files = {p.name for p in (out / stem).iterdir()}
        assert {"labels.png", "overlay.png", "objects.csv", "objects.geojson", "run.json"} <= files
        info = json.loads((out / stem / "run.json").read_text())
        assert info["model"]["sha256"] and info["pathseg_version"] and info["mpp"] == 0.5
        assert set(info["timings"]) >= {"infer_s", "postprocess_s", "write_s"}
        gj = json.loads((out / stem / "objects.geojson").read_text())
        assert gj["type"] == "FeatureCollection" and len(gj["features"]) == info["n_objects"]
        for feat in gj["features"]:
            m = feat["properties"]["measurements"]
            assert "area_px" in m and "solidity" in m and "id" not in m
        with open(out / stem / "objects.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == info["n_objects"]
        lab = np.array(Image.open(out / stem / "labels.png"))
        assert lab.shape == (96, 96) and lab.max() == info["n_objects"]
    # A second run resumes: nothing is redone or overwritten.
    before = (out / "a" / "run.json").stat().st_mtime_ns
    r2 = run("segment", str(tmp_path / "a.png"), "--model", str(tiny_model), "--out", str(out), "--mpp", "0.5", "--window", "64", "--halo", "8")
    assert r2.returncode == 0 and "skipped" in r2.stderr
    assert (out / "a" / "run.json").stat().st_mtime_ns == before


def test_bad_file_is_reported_and_others_finish(tmp_path, tiny_model):
    img, _ = synthetic_nuclei(64)
    Image.fromarray(img).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.fromarray(img[..., 0]).save(tmp_path / "grey.png")
    out = tmp_path / "out"
    r = run("segment", str(tmp_path), "--model", str(tiny_model), "--out", str(out), "--window", "64", "--halo", "8")
    assert r.returncode == 1
    assert "bad.png" in r.stderr and "grey.png" in r.stderr and "Traceback" not in r.stderr
    assert (out / "good" / "run.json").is_file()
    with open(out / "summary.csv") as f:
        status = {Path(row["input"]).name: row["status"] for row in csv.DictReader(f)}
    assert status == {"bad.png": "failed", "good.png": "done", "grey.png": "failed"}


@pytest.mark.parametrize(
    "args,needle",
    [
        (["segment", "x.png"], "--out"),
        (["segment", "x.png", "--out", "o", "--precision", "fp64"], "--precision fp64"),
        (["segment", "x.png", "--out", "o", "--halo", "-4"], "--halo -4"),
        (["segment", "x.png", "--out", "o", "--window", "500"], "multiple of 16"),
        (["segment", "x.png", "--out", "o", "--device", "tpu"], "--device tpu"),
        (["segment", "nothing-here/*.png", "--out", "o"], "no images found"),
        (["segment", "x.png", "--model", "no-such-model", "--out", "o"], "not a built-in model"),
        (["evaluate", "--data", "no-such-dir"], "no-such-dir"),
        (["train", "nuclei", "--data", "no-such-dir", "--out", "r"], "no-such-dir"),
    ],
)
def test_user_errors_exit_2_with_one_line(tmp_path, args, needle):
    (tmp_path / "x.png").write_bytes(b"")
    r = run(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr


def test_version():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("pathseg ")


def test_pathseg_errors_are_one_line(tmp_path):
    r = run("segment", "nothing-here/*.png", "--out", "o", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_resume_refuses_a_different_image_with_the_same_name(tmp_path, tiny_model):
    img, _ = synthetic_nuclei(64)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    Image.fromarray(img).save(tmp_path / "one" / "s.png")
    Image.fromarray(img[::-1].copy()).save(tmp_path / "two" / "s.png")
    common = ["--model", str(tiny_model), "--out", str(tmp_path / "out"), "--window", "64", "--halo", "8"]
    assert run("segment", str(tmp_path / "one" / "s.png"), *common).returncode == 0
    r = run("segment", str(tmp_path / "two" / "s.png"), *common)
    assert r.returncode == 1 and "another input" in r.stderr


def test_evaluate_prints_table_and_writes_json(synthetic_dataset, tmp_path, tiny_model):
    (tmp_path / "groups.csv").write_text("name,group\nimg0,patientA\nimg1,patientB\n")
    r = run("evaluate", "--model", str(tiny_model), "--data", str(synthetic_dataset), "--json", str(tmp_path / "e.json"),
            "--mpp", "0.5", "--window", "64", "--halo", "8", "--groups", str(tmp_path / "groups.csv"))
    assert r.returncode == 0, r.stderr
    assert "aji" in r.stdout and "seconds" in r.stdout
    res = json.loads((tmp_path / "e.json").read_text())
    assert res["summary"]["dice"]["n"] == 2 and len(res["per_image"]) == 2
    assert set(res["summary"]["groups"]) == {"patientA", "patientB"}


def test_models_lists_builtin_cards():
    assert "nuclei-he" in list_builtin()  # shipped inside the package, with its card
    r = run("models")
    assert r.returncode == 0
    assert "nuclei-he" in r.stdout and "monuseg" in r.stdout.lower()


def test_demo_runs_with_no_arguments(tmp_path):
    r = run("demo", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    folder = tmp_path / "pathseg-demo" / "skimage-ihc"
    info = json.loads((folder / "run.json").read_text())
    assert info["model"]["name"] == "nuclei-he" and info["n_objects"] > 50
