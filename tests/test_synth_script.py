"""Scene scripts: validation errors name the script, the line and the key; built-in scenes load."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pathseg.errors import InputError
from pathseg.synth import list_scenes, load_scene
from pathseg.synth.colour import ColourStats, save_colours
from pathseg.synth.script import parse_scene

BASE = """\
name: test
size: [64, 64]
regions:
  area: {kind: voronoi, n: 4, k: 2}
layers:
  - name: background
    category: background
    fill: true
    colour: {mean: [0.9, 0.8, 0.9], noise_std: 0.02}
  - name: cells
    category: cell
    shape: {kind: ellipse, semi_axes: [[4, 6], [3, 5]]}
    placement: {kind: no_overlap, count: [3, 6], region: area}
    colour: {mean: [0.5, 0.3, 0.6], texture_std: 0.03}
  - name: nuclei
    category: nucleus
    shape: {kind: ellipse, semi_axes: [2, 1.5]}
    placement: {kind: inside, parent: cells}
    colour: {mean: [0.3, 0.2, 0.4]}
    visibility: 0.6
mask:
  - {rule: visible, layer: nuclei}
"""


def error(text: str, path: Path | None = None) -> str:
    with pytest.raises(InputError) as info:
        parse_scene(text, path=path, script="s.yaml" if path is None else None)
    message = str(info.value)
    assert "\n" not in message
    return message


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if needle in line)


def test_base_scene_parses():
    scene = parse_scene(BASE, script="s.yaml")
    assert [spec.name for spec in scene.layers] == ["background", "cells", "nuclei"]
    assert scene.layer("cells").placement.count == (3, 6)
    assert scene.layer("nuclei").shape.semi_axes == ((2.0, 2.0), (1.5, 1.5))
    assert scene.layer("nuclei").visibility == 0.6
    assert scene.mask[0].rule == "visible"


def test_unknown_key_names_line_and_suggests():
    text = BASE.replace("    colour: {mean: [0.5, 0.3, 0.6]", "    colr: {mean: [0.5, 0.3, 0.6]")
    msg = error(text)
    assert msg.startswith(f"s.yaml: line {line_of(text, 'colr')}: layers[1]: unknown key 'colr'")
    assert "did you mean 'colour'?" in msg


def test_unknown_value_lists_choices():
    text = BASE.replace("kind: no_overlap", "kind: no_overlapp")
    msg = error(text)
    assert f"line {line_of(text, 'no_overlapp')}: layers[1].placement.kind: unknown value 'no_overlapp'" in msg
    assert "choose from random, no_overlap, inside, grow" in msg
    text = BASE.replace("kind: voronoi", "kind: voronio")
    assert "regions.area.kind: unknown value 'voronio' (choose from voronoi, fmm)" in error(text)


@pytest.mark.parametrize("old, new, expected", [
    ("visibility: 0.6", "visibility: 1.5", "layers[2].visibility: value 1.5 out of range (must be >= 0 and <= 1)"),
    ("count: [3, 6]", "count: [6, 3]", "layers[1].placement.count: low 6 is greater than high 3"),
    ("count: [3, 6]", "count: [3, many]", "layers[1].placement.count[1]: expected an integer, got 'many'"),
    ("semi_axes: [2, 1.5]", "semi_axes: [2]", "layers[2].shape.semi_axes: expected two semi-axes"),
    ("size: [64, 64]", "size: [64, 64.5]", "size: height and width must be whole pixels"),
    ("n: 4, k: 2", "n: 4, k: 5", "regions.area.k: k = 5 regions cannot be picked out of n = 4"),
    ("mean: [0.9, 0.8, 0.9]", "mean: [0.9, 0.8]", "layers[0].colour.mean: expected a list of 3 numbers, got 2"),
    ("placement: {kind: inside, parent: cells}", "placement: {kind: inside, parent: cells, count: 3}",
     "layers[2].placement.count: not used by placement kind 'inside'"),
    ("fill: true", "fill: true\n    shape: {kind: ellipse, semi_axes: [1, 1]}", "layers[0].shape: 'shape' is only used"),
    ("name: test", "name: te st", "name: 'te st' is not usable in file names"),
    ("  - name: nuclei", "  - name: cells", "layer name 'cells' already used by layers[1]"),
    ("noise_std: 0.02}", "noise_std: 0.02, noise_std: 0.03}", "key 'noise_std' given twice"),
])
def test_bad_values_name_line_and_key(old, new, expected):
    text = BASE.replace(old, new)
    msg = error(text)
    assert expected in msg
    assert re.match(r"^s\.yaml: line \d+: ", msg)


def test_bad_value_points_at_its_line():
    text = BASE.replace("count: [3, 6]", "count: [6, 3]")
    assert error(text).startswith(f"s.yaml: line {line_of(text, 'count: [6, 3]')}:")


@pytest.mark.parametrize("old, new, expected", [
    ("parent: cells", "parent: celss", "placement refers to unknown layer 'celss'"),
    ("region: area", "region: aera", "layers[1].placement.region: unknown value 'aera' (choose from area)"),
    ("{rule: visible, layer: nuclei}", "{rule: visible, layer: nucleus}", "mask[0].layer: unknown value 'nucleus'"),
    ("{rule: visible, layer: nuclei}", "{rule: concentration, layer: nuclei, of: celss}", "mask[0].of: unknown value"),
    ("{rule: visible, layer: nuclei}", "{rule: visible, layer: background}", "mask[0].layer: unknown value"),
    ("{rule: visible, layer: nuclei}", "{rule: concentration, layer: nuclei}", "needs 'of'"),
    ("{rule: visible, layer: nuclei}", "{rule: visible, layer: nuclei, radius: 3}", "not used by rule 'visible'"),
    ("placement: {kind: inside, parent: cells}", "placement: {kind: inside, parent: background}",
     "placement parent 'background' must be an object layer"),
    ("placement: {kind: inside, parent: cells}", "placement: {kind: inside, parent: nuclei}",
     "placement refers to its own layer"),
])
def test_bad_references(old, new, expected):
    assert expected in error(BASE.replace(old, new))


def test_dependency_cycle_is_an_error():
    text = BASE.replace("placement: {kind: no_overlap, count: [3, 6], region: area}",
                        "placement: {kind: no_overlap, count: [3, 6], region: area, avoid: [nuclei]}")
    assert "cycle" in error(text)


def test_impossible_placement_is_a_load_time_error():
    text = BASE.replace("count: [3, 6]", "count: [300, 400]")
    msg = error(text)
    assert msg.startswith(f"s.yaml: line {line_of(text, 'count: [300, 400]')}: layers[1].placement.count:")
    assert "layer 'cells'" in msg and "lower count or size" in msg


def test_yaml_syntax_error_has_line():
    text = BASE.replace("  - name: cells", "  - name: [cells")
    assert re.match(r"^s\.yaml: line \d+: YAML syntax error", error(text))
    assert error("") == "s.yaml: empty scene script"
    assert "expected a mapping" in error("- just\n- a list\n")


def test_missing_required_keys():
    assert "missing required key 'layers'" in error("name: x\n")
    text = BASE.replace("    shape: {kind: ellipse, semi_axes: [[4, 6], [3, 5]]}\n", "")
    assert "missing required key 'shape'" in error(text)
    text = BASE.replace("    colour: {mean: [0.3, 0.2, 0.4]}\n", "")
    assert "missing required key 'colour'" in error(text)
    assert "exactly one of 'fill', 'ribbons' or 'placement'" in error(BASE.replace("    fill: true\n", ""))


def colour_file(tmp_path: Path) -> Path:
    cats = {"nucleus": ColourStats(np.array([0.4, 0.3, 0.5]), np.eye(3) * 1e-3, np.eye(3) * 1e-3,
                                   cohorts=np.array([[0.3, 0.2, 0.4], [0.5, 0.4, 0.6]]))}
    path = tmp_path / "mine.json"
    save_colours(path, cats)
    return path


def test_colour_file_fit_and_override(tmp_path):
    colour_file(tmp_path)
    text = BASE.replace("size: [64, 64]", "size: [64, 64]\ncolours: mine.json").replace(
        "colour: {mean: [0.3, 0.2, 0.4]}", "colour: {fit: nucleus, texture_sigma: 3, jitter: 0.02}")
    (tmp_path / "s.yaml").write_text(text)
    scene = load_scene(tmp_path / "s.yaml")
    stats = scene.layer("nuclei").colour.stats
    assert stats.texture_sigma == 3.0 and stats.cohorts.shape == (2, 3)
    np.testing.assert_allclose(stats.mean, [0.4, 0.3, 0.5])
    bad = text.replace("fit: nucleus", "fit: nucleos")
    assert "colour.fit: unknown value 'nucleos' (choose from nucleus)" in error(bad, tmp_path / "s.yaml")
    nofile = BASE.replace("colour: {mean: [0.3, 0.2, 0.4]}", "colour: {fit: nucleus}")
    assert "no colour file to fit from" in error(nofile)


def test_wrong_shaped_colour_file_names_file_key_and_line(tmp_path):
    doc = json.loads(colour_file(tmp_path).read_text())
    doc["categories"]["nucleus"]["noise_cov"] = [[1, 0, 0], [0, 1, 0]]
    (tmp_path / "mine.json").write_text(json.dumps(doc))
    text = BASE.replace("size: [64, 64]", "size: [64, 64]\ncolours: mine.json")
    msg = error(text, tmp_path / "s.yaml")
    assert msg.startswith(f"{tmp_path / 's.yaml'}: line {line_of(text, 'colours:')}: colours:")
    assert "mine.json" in msg and "noise_cov" in msg and "3x3" in msg
    missing = BASE.replace("size: [64, 64]", "size: [64, 64]\ncolours: nope.json")
    assert "colour file 'nope.json' not found" in error(missing, tmp_path / "s.yaml")
    unknown = BASE.replace("size: [64, 64]", "size: [64, 64]\ncolours: no-such-builtin")
    assert "no built-in colour file" in error(unknown, tmp_path / "s.yaml")


def test_inline_colour_is_validated():
    bad = BASE.replace("colour: {mean: [0.3, 0.2, 0.4]}", "colour: {mean: [0.3, 0.2, 0.4], noise_cov: [[1, 2], [3, 4]]}")
    msg = error(bad)
    assert "layers[2].colour" in msg and "noise_cov" in msg and "3x3" in msg
    both = BASE.replace("noise_std: 0.02}", "noise_std: 0.02, noise_cov: [[0, 0, 0], [0, 0, 0], [0, 0, 0]]}")
    assert "give either 'noise_cov' or 'noise_std'" in error(both)


def test_std_and_correlation_make_a_covariance():
    text = BASE.replace("noise_std: 0.02}", "noise_std: [0.1, 0.2, 0.1], noise_corr: 0.5}")
    cov = parse_scene(text).layer("background").colour.stats.noise_cov
    np.testing.assert_allclose(np.diag(cov), [0.01, 0.04, 0.01])
    np.testing.assert_allclose(cov[0, 1], 0.5 * 0.1 * 0.2)


def test_patch_bank_and_texture_bank_files(tmp_path):
    from pathseg.synth.colour import save_texture_bank
    from pathseg.synth.shapes import PatchBank

    PatchBank(rgb=[np.full((5, 5, 3), 0.4, np.float32)], mask=[np.ones((5, 5), bool)]).save(tmp_path / "p.npz")
    save_texture_bank(tmp_path / "t.npz", [np.full((4, 8, 8, 3), 0.5, np.float32)])
    text = BASE.replace("shape: {kind: ellipse, semi_axes: [[4, 6], [3, 5]]}", "shape: {kind: patches, bank: p.npz}")
    text = text.replace("texture_std: 0.03}", "texture_std: 0.03}\n    texture: {kind: lattice, bank: t.npz, patch: 6}")
    (tmp_path / "s.yaml").write_text(text)
    scene = load_scene(tmp_path / "s.yaml")
    assert scene.layer("cells").texture.patch == 6 and len(scene.layer("cells").shape.bank) == 1
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    bad = text.replace("bank: p.npz", "bank: bad.npz")
    assert "not a patch bank" in error(bad, tmp_path / "s.yaml")
    bad = text.replace("bank: t.npz", "bank: bad.npz")
    assert f"line {line_of(bad, 'bank: bad.npz')}: layers[1].texture.bank:" in error(bad, tmp_path / "s.yaml")


def test_builtin_scenes_load():
    names = list_scenes()
    assert {"if-immune-tumour", "he-immune-rich", "he-tumour-nuclei", "he-nuclei", "cd163-macrophage"} <= set(names)
    for name in names:
        scene = load_scene(name)
        assert scene.name == name and scene.size == (300, 300) and scene.mask
        assert sorted(scene.generation_order()) == list(range(len(scene.layers)))


def test_unknown_scene_name():
    with pytest.raises(InputError, match="no such scene file nor built-in scene"):
        load_scene("no-such-scene")


def test_example_in_docstring_is_plain_yaml():
    # The schema keeps to YAML flow/block basics: a multi-line description is fine.
    text = BASE.replace("name: test\n", "name: test\ndescription: >-\n  two\n  lines\n")
    assert parse_scene(textwrap.dedent(text)).description == "two lines"
