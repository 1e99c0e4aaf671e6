"""Synthetic generator: determinism, sane outputs of every built-in scene, mask rules, dataset writing."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from pathseg.errors import OutputError
from pathseg.io import list_samples, read_label
from pathseg.synth import (
    generate,
    generate_batch,
    list_scenes,
    load_scene,
    write_dataset,
)
from pathseg.synth.rules import LayerState, ObjectRecord, apply_rules, mask_from_rules
from pathseg.synth.script import parse_scene
from pathseg.synth.spec import MaskRule

TINY = """\
name: tiny
size: [64, 64]
acquisition: {blur: 0.5, noise: 0.02}
layers:
  - name: background
    category: background
    fill: true
    colour: {mean: [0.9, 0.85, 0.9], noise_std: 0.02, texture_std: 0.02, texture_sigma: 4}
  - name: cells
    category: cell
    shape: {kind: irregular, semi_axes: [[5, 8], [4, 6]]}
    placement: {kind: no_overlap, count: [4, 6]}
    colour: {mean: [0.7, 0.5, 0.7], noise_std: 0.02, cohorts: [[0.7, 0.5, 0.7], [0.6, 0.5, 0.7]], jitter: 0.02}
    outline: {colour: [0.5, 0.3, 0.5]}
  - name: nuclei
    category: nucleus
    shape: {kind: ellipse, semi_axes: [[2, 3], [1.5, 2.5]]}
    placement: {kind: inside, parent: cells}
    colour: {mean: [0.3, 0.2, 0.4], noise_std: 0.02}
    visibility: 0.6
  - name: immune
    category: immune
    shape: {kind: ellipse, semi_axes: [3, 3]}
    placement: {kind: random, count: [2, 3]}
    colour: {mean: [0.2, 0.1, 0.3]}
mask:
  - {rule: visible, layer: nuclei}
"""


def tiny():
    return parse_scene(TINY, script="tiny.yaml")


def test_same_seed_identical_different_seed_differs():
    scene = tiny()
    a, b, c = generate(scene, 7), generate(scene, 7), generate(scene, 8)
    for key in ("u0", "g_u", "g_m", "instances"):
        assert np.array_equal(getattr(a, key), getattr(b, key)), key
    assert a.table == b.table
    assert not np.array_equal(a.u0, c.u0)


def test_tiny_scene_outputs_are_consistent():
    s = generate(tiny(), 3)
    assert s.u0.shape == s.g_u.shape == (64, 64, 3) and s.u0.dtype == s.g_u.dtype == np.float32
    assert s.g_m.shape == s.instances.shape == (64, 64)
    # Top-most object wins: the visible nuclei (alpha 0.6 >= 0.5) take their pixels from the cells.
    nuclei = {r["id"] for r in s.table if r["layer"] == "nuclei"}
    cells = {r["id"]: r for r in s.table if r["layer"] == "cells"}
    assert nuclei and all(r["parent"] in cells for r in s.table if r["layer"] == "nuclei")
    # The visible rule: nucleus pixels not hidden by the immune layer, exactly.
    covered = np.isin(s.instances, [r["id"] for r in s.table if r["layer"] == "immune"])
    nucleus_px = np.isin(s.instances, list(nuclei))
    assert not (s.g_m.astype(bool) & covered).any()
    assert np.array_equal(s.g_m.astype(bool) & ~covered, s.g_m.astype(bool))
    assert (s.g_m.astype(bool) >= nucleus_px).all()


def test_size_override_scales_counts():
    scene = tiny()
    big = generate(scene, 1, size=(128, 128))
    assert big.u0.shape == (128, 128, 3)
    n_big = sum(r["layer"] == "cells" for r in big.table)
    assert 16 <= n_big <= 24  # 4-6 cells on 64^2 -> 4x on 128^2


@pytest.mark.parametrize("name", ["if-immune-tumour", "he-immune-rich", "he-tumour-nuclei", "he-nuclei",
                                  "cd163-macrophage"])
def test_builtin_scene_outputs_are_sane(name):
    scene = load_scene(name)
    masks = []
    for seed in (0, 1):
        s = generate(scene, seed)
        assert s.u0.shape == s.g_u.shape == (300, 300, 3)
        for arr in (s.u0, s.g_u):
            assert arr.dtype == np.float32 and 0 <= arr.min() and arr.max() <= 1
        assert np.abs(s.u0 - s.g_u).mean() > 0.005  # u0 is really noisy
        assert set(np.unique(s.g_m)) <= {0.0, 1.0}
        # Instances agree with the table: ids, visible areas, and in_mask objects touch the mask.
        ids = np.array([r["id"] for r in s.table])
        assert len(ids) == len(set(ids)) and s.table
        present = np.unique(s.instances)
        assert set(present[present > 0]) <= set(ids)
        counts = np.bincount(s.instances.ravel(), minlength=ids.max() + 1)
        for r in s.table:
            assert counts[r["id"]] == r["area_px"] <= r["area_full_px"]
            if r["in_mask"] and r["area_px"]:
                assert s.g_m[s.instances == r["id"]].max() == 1.0
        masks.append(s.g_m.mean())
    assert max(masks) > 0.0  # the task mask is not always empty


def test_mask_rules_on_hand_made_layers():
    shape = (100, 100)

    def disc_object(oid: int, cy: int, cx: int, r: int = 3) -> ObjectRecord:
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
        return ObjectRecord(oid, cy - r, cx - r, yy**2 + xx**2 <= r * r)

    tumour = np.zeros(shape, bool)
    tumour[:, :40] = True  # tumour fills the left 40 columns
    immune_objs = [disc_object(1, 50, 20), disc_object(2, 50, 45), disc_object(3, 50, 90), disc_object(4, 5, 60)]
    labels = np.zeros(shape, np.int32)
    for rec in immune_objs:
        labels[rec.top:rec.top + 7, rec.left:rec.left + 7][rec.mask] = rec.id
    cover = np.zeros(shape, np.float32)
    cover[45:56, 85:96] = 1.0  # an opaque blob over object 3
    layers = [LayerState("tumour", "tumour", tumour.astype(np.float32), tumour),
              LayerState("immune", "immune", (labels > 0).astype(np.float32), labels > 0, labels, immune_objs),
              LayerState("top", "blob", cover, cover > 0)]
    rule = MaskRule("concentration", "immune", of="tumour", radius=20, threshold=0.3)
    # Disc r=20 around (50,20): all tumour; around (50,45): columns 25..39 of 25..65 -> ~0.3 < ...
    mask, selected = apply_rules([rule], layers, shape)
    expected = {1}
    for rec in immune_objs:  # brute-force check of the concentration of every object
        yy, xx = np.mgrid[:100, :100]
        cy, cx = rec.centroid()
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 400
        if tumour[disc].mean() > 0.3:
            expected.add(rec.id)
    assert selected == expected == {1, 2}
    assert np.array_equal(mask, np.isin(labels, [1, 2]))
    # 'visible' drops the pixels under the opaque blob; 'objects' keeps every object pixel.
    visible = mask_from_rules([MaskRule("visible", "immune")], layers, shape)
    assert not visible[45:56, 85:96].any() and visible[labels == 1].all()
    objects = mask_from_rules([MaskRule("objects", "immune")], layers, shape)
    assert np.array_equal(objects, labels > 0)


def test_generate_batch_shapes():
    batch = generate_batch(tiny(), [0, 1, 2], size=(48, 40))
    assert batch["u0"].shape == batch["g_u"].shape == (3, 3, 48, 40)
    assert batch["g_m"].shape == (3, 1, 48, 40)
    assert all(v.dtype == np.float32 for v in batch.values())


def test_sample_save(tmp_path):
    s = generate(tiny(), 0)
    s.save(tmp_path, "x")
    assert np.array_equal(read_label(tmp_path / "x_labels.png"), s.instances)
    assert np.asarray(Image.open(tmp_path / "x_mask.png")).max() in (0, 255)
    assert (tmp_path / "x_objects.csv").read_text().startswith("id,layer,category,parent,")


def test_write_dataset_resumes_and_refuses_other_settings(tmp_path):
    scene = tiny()
    out = tmp_path / "ds"
    calls = []
    write_dataset(scene, out, n=3, seed=5, progress=calls.append)
    assert calls == [1, 2, 3]
    samples = list_samples(out)
    assert [s.name for s in samples] == ["tiny_00000", "tiny_00001", "tiny_00002"]
    expected = generate(scene, 6)
    assert np.array_equal(read_label(out / "labels" / "tiny_00001.png"), expected.instances)
    meta = json.loads((out / "synth.json").read_text())
    assert meta["scene"] == "tiny" and meta["seed"] == 5 and meta["n"] == 3
    assert (out / "scene.yaml").read_text() == TINY
    # Resume: a missing file is regenerated, complete samples are left alone.
    keep = out / "images" / "tiny_00000.png"
    os.utime(keep, (1, 1))
    (out / "masks" / "tiny_00002.png").unlink()
    write_dataset(scene, out, n=4, seed=5)
    assert keep.stat().st_mtime == 1
    assert (out / "masks" / "tiny_00002.png").is_file() and (out / "images" / "tiny_00003.png").is_file()
    with pytest.raises(OutputError, match="other settings"):
        write_dataset(scene, out, n=4, seed=6)
    write_dataset(scene, out, n=2, seed=6, overwrite=True)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["tiny_00000.png", "tiny_00001.png"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("x")
    with pytest.raises(OutputError, match="not empty"):
        write_dataset(scene, other, n=1, seed=0)


def test_patches_and_lattice_layers(tmp_path):
    from pathseg.synth.colour import save_texture_bank
    from pathseg.synth.shapes import PatchBank

    rgb = np.zeros((9, 9, 3), np.float32)
    rgb[..., 1] = 0.8
    yy, xx = np.mgrid[-4:5, -4:5]
    PatchBank(rgb=[rgb], mask=[yy**2 + xx**2 <= 16]).save(tmp_path / "p.npz")
    save_texture_bank(tmp_path / "t.npz", [np.full((3, 6, 6, 3), 0.2, np.float32),
                                           np.full((3, 6, 6, 3), 0.25, np.float32)])
    text = TINY.replace("shape: {kind: ellipse, semi_axes: [3, 3]}", "shape: {kind: patches, bank: p.npz}")
    text = text.replace("colour: {mean: [0.2, 0.1, 0.3]}", "")
    text = text.replace("    outline: {colour: [0.5, 0.3, 0.5]}\n", "    texture: {kind: lattice, bank: t.npz}\n")
    (tmp_path / "s.yaml").write_text(text)
    s = generate(load_scene(tmp_path / "s.yaml"), 0)
    immune = [r["id"] for r in s.table if r["layer"] == "immune"]
    cells = [r["id"] for r in s.table if r["layer"] == "cells" and r["area_px"] > 0]
    assert immune and cells
    # Patch objects show the patch's own colour; lattice cells one of the two cohort tones.
    assert np.allclose(s.g_u[np.isin(s.instances, immune)], [0, 0.8, 0], atol=1e-6)
    red = s.g_u[np.isin(s.instances, cells)][:, 0]
    assert (np.isclose(red, 0.2) | np.isclose(red, 0.25)).all()


def test_list_scenes_has_five_builtins():
    assert len(list_scenes()) >= 5
