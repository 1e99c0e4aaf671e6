"""Review regressions: bad scripts, banks, colour files and dataset folders fail cleanly, never hang."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from pathseg.errors import InputError, OutputError
from pathseg.stain.reinhard import check_stats
from pathseg.synth.colour import load_colours
from pathseg.synth.colour_fit import load_texture_bank, save_texture_bank
from pathseg.synth.generate import write_dataset
from pathseg.synth.script import parse_scene
from pathseg.synth.shapes import PatchBank

HEAD = """\
name: {name}
size: [64, 64]
layers:
  - name: bg
    category: background
    fill: true
    colour: {{mean: [0.9, 0.8, 0.85]}}
"""


def _objects(shape: str, placement: str) -> str:
    return (HEAD.format(name="t") + "  - name: n\n    category: nucleus\n"
            f"    shape: {shape}\n    placement: {placement}\n    colour: {{mean: [0.3, 0.2, 0.4]}}\n")


@pytest.mark.parametrize("shape, placement", [
    ("{kind: ellipse, semi_axes: [[200, 500], [200, 500]]}", "{kind: random, count: [100000, 100000]}"),
    ("{kind: fmm_cell, semi_axes: [[200, 500], [200, 500]], grow: 200}", "{kind: random, count: [1000, 1000]}"),
    ("{kind: fmm_cell, semi_axes: [[100, 100], [100, 100]], grow: 100}", "{kind: random, count: [1, 1]}"),
])
def test_huge_work_is_refused_at_load_time(shape: str, placement: str) -> None:
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=r"s\.yaml: line 11: layers\[1\]\.placement\.count: .*too much work"):
        parse_scene(_objects(shape, placement), script="s.yaml")
    assert time.perf_counter() - t0 < 5


def test_region_without_regions_says_so() -> None:
    text = _objects("{kind: ellipse, semi_axes: [3, 3]}", "{kind: random, count: [1, 2], region: area}")
    with pytest.raises(InputError, match="line 11: .*region: no regions are defined"):
        parse_scene(text, script="s.yaml")


def test_overwrite_removes_the_old_scenes_images(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    write_dataset(parse_scene(HEAD.format(name="first")), out, n=2, seed=0)
    write_dataset(parse_scene(HEAD.format(name="second")), out, n=1, seed=0, overwrite=True)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["second_00000.png"]


def test_changed_colour_file_is_not_resumed(tmp_path: Path) -> None:
    cov = np.zeros((3, 3)).tolist()
    doc = {"version": 1, "categories": {"bg": {"mean": [0.9, 0.8, 0.8], "noise_cov": cov, "texture_cov": cov}}}
    (tmp_path / "c.json").write_text(json.dumps(doc))
    script = tmp_path / "s.yaml"
    script.write_text(HEAD.format(name="t").replace("colour: {mean: [0.9, 0.8, 0.85]}", "colour: {fit: bg}")
                      .replace("layers:", "colours: c.json\nlayers:"))
    out = tmp_path / "ds"
    write_dataset(parse_scene(script.read_text(), path=script), out, n=1, seed=0)
    doc["categories"]["bg"]["mean"] = [0.5, 0.5, 0.5]
    (tmp_path / "c.json").write_text(json.dumps(doc))
    with pytest.raises(OutputError, match="other settings"):
        write_dataset(parse_scene(script.read_text(), path=script), out, n=1, seed=0)


def test_texture_bank_garbage_and_bad_values(tmp_path: Path) -> None:
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04" + b"\0" * 50)  # looks like a zip, is not one
    with pytest.raises(InputError, match="broken.npz: not a texture bank"):
        load_texture_bank(broken)
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(InputError, match="not an .npz archive") as info:
        load_texture_bank(text)
    assert "allow_pickle" not in str(info.value)
    nan = tmp_path / "nan.npz"
    save_texture_bank(nan, [np.full((2, 4, 4, 3), np.nan, np.float32)])
    with pytest.raises(InputError, match="finite"):
        load_texture_bank(nan)


def test_patch_bank_rejects_empty_masks_and_bad_colours(tmp_path: Path) -> None:
    path = tmp_path / "b.npz"
    PatchBank(rgb=[np.full((5, 5, 3), 0.5, np.float32)], mask=[np.zeros((5, 5), bool)]).save(path)
    with pytest.raises(InputError, match="empty mask"):
        PatchBank.load(path)
    PatchBank(rgb=[np.full((5, 5, 3), np.nan, np.float32)], mask=[np.ones((5, 5), bool)]).save(path)
    with pytest.raises(InputError, match="finite"):
        PatchBank.load(path)
    (tmp_path / "t.npz").write_text("hello")
    with pytest.raises(InputError, match="not an .npz archive") as info:
        PatchBank.load(tmp_path / "t.npz")
    assert "allow_pickle" not in str(info.value)


def test_colour_variance_above_one_is_a_unit_mistake(tmp_path: Path) -> None:
    cov = (np.eye(3) * 400.0).tolist()  # 0-255 units
    doc = {"version": 1, "categories": {"a": {"mean": [0.1, 0.2, 0.3], "noise_cov": cov,
                                               "texture_cov": np.zeros((3, 3)).tolist()}}}
    (tmp_path / "c.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"c.json: categories.a.noise_cov: variances must be <= 1"):
        load_colours(tmp_path / "c.json")


@pytest.mark.parametrize("stats", [{"foo": 1}, {"mean": "abc", "std": [1, 1, 1]}, {"mean": [1, 2, 3]}])
def test_reinhard_stats_errors_are_input_errors(stats: dict) -> None:
    with pytest.raises(InputError, match="^ref"):
        check_stats(stats, "ref")


def test_training_cache_with_wrong_shapes_is_regenerated(tmp_path: Path) -> None:
    from pathseg.train.varnet import VarNetTrainConfig, _Pool

    def data_fn(seeds, size):
        n = len(list(seeds))
        return {"u0": np.zeros((n, 3, size, size)), "g_u": np.zeros((n, 3, size, size)),
                "g_m": np.ones((n, 1, size, size))}

    cfg = VarNetTrainConfig(scenario="x", out=str(tmp_path), size=16, n_train=4)
    _Pool(tmp_path / "cache", data_fn, cfg, "fp")
    np.savez(tmp_path / "cache" / "train_00000.npz", u0=np.zeros((4, 3, 8, 8)), g_u=np.zeros((4, 3, 8, 8)),
             g_m=np.zeros((4, 1, 8, 8)))
    (tmp_path / "cache" / "meta.json").write_text("{broken")  # a damaged meta must not crash either
    pool = _Pool(tmp_path / "cache", data_fn, cfg, "fp")
    (tmp_path / "cache" / "train_00000.npz").write_bytes(b"PK\x03\x04junk")
    batch = pool.batch([0, 3])
    assert batch["g_m"].shape == (2, 1, 16, 16) and batch["g_m"].min() == 1


def test_fit_colours_does_not_overwrite_a_texture_bank(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pathseg.cli import app

    (tmp_path / "data").mkdir()
    (tmp_path / "c.textures.npz").write_bytes(b"precious")
    res = CliRunner().invoke(app, ["synth", "fit-colours", "--data", str(tmp_path / "data"), "--out",
                                   str(tmp_path / "c.json"), "--textures"])
    assert isinstance(res.exception, OutputError) and "c.textures.npz: exists" in str(res.exception)
    assert (tmp_path / "c.textures.npz").read_bytes() == b"precious"
