"""`pathseg synth`, `pathseg synth fit-colours` and `pathseg train varnet`, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pathseg.models import load_model
from pathseg.synth.colour import load_colours


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pathseg", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    """Three small he-nuclei images written by the CLI."""
    out = tmp_path_factory.mktemp("synth") / "he"
    r = run("synth", "--scene", "he-nuclei", "--n", "3", "--size", "96", "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


def test_synth_writes_a_dataset_and_resumes(synth_dir, tmp_path):
    names = sorted(p.name for p in (synth_dir / "images").iterdir())
    assert names == [f"he-nuclei_{i:05d}.png" for i in range(3)]
    for sub in ("clean", "masks", "labels", "objects"):
        assert len(list((synth_dir / sub).iterdir())) == 3
    u0 = np.asarray(Image.open(synth_dir / "images" / names[0]))
    clean = np.asarray(Image.open(synth_dir / "clean" / names[0]))
    labels = np.asarray(Image.open(synth_dir / "labels" / names[0]))
    mask = np.asarray(Image.open(synth_dir / "masks" / names[0]))
    assert u0.shape == (96, 96, 3) and not np.array_equal(u0, clean)  # u0 is the noisy one
    assert labels.max() > 0 and set(np.unique(mask)) <= {0, 255}
    # he-nuclei: the mask is every nucleus, so it equals the instance foreground.
    assert np.array_equal(mask > 0, labels > 0)
    meta = json.loads((synth_dir / "synth.json").read_text())
    assert meta["seed"] == 0 and meta["n"] == 3
    # Same settings: resumes without rewriting; other settings: refused with exit 2, one line.
    before = (synth_dir / "images" / names[0]).stat().st_mtime_ns
    again = run("synth", "--scene", "he-nuclei", "--n", "3", "--size", "96", "--out", str(synth_dir))
    assert again.returncode == 0, again.stderr
    assert (synth_dir / "images" / names[0]).stat().st_mtime_ns == before
    other = run("synth", "--scene", "he-nuclei", "--n", "3", "--size", "96", "--seed", "5", "--out", str(synth_dir))
    assert other.returncode == 2 and "overwrite" in other.stderr and "Traceback" not in other.stderr


def test_synth_same_seed_same_bytes_across_processes(synth_dir, tmp_path):
    out = tmp_path / "again"
    r = run("synth", "--scene", "he-nuclei", "--n", "1", "--size", "96", "--out", str(out))
    assert r.returncode == 0, r.stderr
    name = "he-nuclei_00000.png"
    a = np.asarray(Image.open(synth_dir / "images" / name))
    b = np.asarray(Image.open(out / "images" / name))
    assert np.array_equal(a, b)


def test_bad_scene_script_is_one_line_with_the_line_number(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsize: [64, 64]\nlayers:\n  - name: bg\n    category: background\n    fill: true\n"
                   "    colr: {mean: [1, 1, 1]}\n")
    r = run("synth", "--scene", str(bad), "--n", "1", "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.yaml" in lines[0] and "line 7" in lines[0] and "colour" in lines[0]
    assert not (tmp_path / "o").exists()


def test_fit_colours_from_a_synthetic_dataset(synth_dir, tmp_path):
    out = tmp_path / "c.json"
    r = run("synth", "fit-colours", "--data", str(synth_dir), "--out", str(out), "--cohorts", "2")
    assert r.returncode == 0, r.stderr
    cats = load_colours(out)
    assert {"nucleus", "background0", "background1"} <= set(cats)
    # Nuclei are the darkest category of an H&E scene.
    assert cats["nucleus"].mean.sum() < cats["background0"].mean.sum()
    again = run("synth", "fit-colours", "--data", str(synth_dir), "--out", str(out))
    assert again.returncode == 2 and "exists" in again.stderr  # never silently overwritten


@pytest.mark.parametrize("arch", ["varnet", "unet"])
def test_train_varnet_then_evaluate(synth_dir, tmp_path, arch):
    run_dir = tmp_path / arch
    r = run("train", "varnet", "--scenario", "he-nuclei", "--arch", arch, "--out", str(run_dir), "--steps", "2",
            "--batch-size", "2", "--size", "48", "--n-train", "4", "--n-val", "2", "--val-every", "1",
            "--ckpt-every", "1", "--nt", "2", "--threads", "1")
    assert r.returncode == 0, r.stderr
    lm = load_model(run_dir / "model")
    assert lm.config.classes == ["background", "he-nuclei"] and lm.config.training["config"]["arch"] == arch
    if arch == "varnet":  # colours were fitted after Reinhard: inputs are normalised the same way
        assert lm.config.normalise.get("kind") == "reinhard"
    ev = run("evaluate", "--model", str(run_dir / "model"), "--data", str(synth_dir), "--mpp", "0.25",
             "--window", "96", "--halo", "16", "--json", str(tmp_path / "ev.json"))
    assert ev.returncode == 0, ev.stderr
    res = json.loads((tmp_path / "ev.json").read_text())
    assert res["run"]["n_images"] == 3
