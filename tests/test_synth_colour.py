"""Colour statistics of the synthetic generator: fitting, colour files, painting, noise, lattice textures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pathseg.errors import InputError
from pathseg.synth.colour import (
    ColourStats,
    builtin_colours,
    cholesky_psd,
    fit_colours,
    fit_colours_cli,
    lab_stats,
    lattice_texture,
    load_colour_file,
    load_colours,
    load_texture_bank,
    noise,
    paint,
    reinhard,
    save_colours,
    texture_bank,
    texture_fields,
)
from tests.conftest import write_dataset

COV = np.array([[4.0, 2.0, 1.0], [2.0, 3.0, 1.0], [1.0, 1.0, 2.0]]) * 1e-3


def _grid_labels(size: int = 128, step: int = 32, r: int = 10) -> np.ndarray:
    """Disks of radius r on a grid, ids 1..n."""
    yy, xx = np.mgrid[:size, :size]
    lab = np.zeros((size, size), np.int32)
    k = 0
    for cy in range(step // 2, size, step):
        for cx in range(step // 2, size, step):
            k += 1
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    return lab


def _stats(**kw) -> ColourStats:
    d = dict(mean=[0.6, 0.4, 0.7], noise_cov=COV, texture_cov=COV / 2, texture_sigma=2.0, cohorts=[[0.5, 0.3, 0.6]])
    d.update(kw)
    return ColourStats(**d)


# --------------------------------------------------------------------------- fitting
def test_constant_image_gives_zero_covariances():
    lab = _grid_labels()
    img = np.empty((128, 128, 3), np.float32)
    img[:] = (0.8, 0.6, 0.7)
    img[lab > 0] = (0.3, 0.2, 0.5)
    cats = fit_colours([img], [lab], background_clusters=2, cohorts=3)
    assert set(cats) == {"nucleus", "background0"}  # one background colour only: the duplicate cluster is dropped
    np.testing.assert_allclose(cats["nucleus"].mean, (0.3, 0.2, 0.5), atol=1e-6)
    np.testing.assert_allclose(cats["background0"].mean, (0.8, 0.6, 0.7), atol=1e-6)
    for s in cats.values():
        np.testing.assert_allclose(s.noise_cov, 0, atol=1e-10)
        np.testing.assert_allclose(s.texture_cov, 0, atol=1e-10)
        assert s.cohorts is not None and len(s.cohorts) == 1


def test_known_noise_covariance_is_recovered():
    rng = np.random.default_rng(0)
    lab = _grid_labels(256)
    img = np.empty((256, 256, 3))
    img[:] = (0.8, 0.6, 0.7)
    img[lab > 0] = (0.35, 0.2, 0.5)
    img += rng.standard_normal(img.shape) @ np.linalg.cholesky(COV).T
    cats = fit_colours([img], [lab], background_clusters=1, cohorts=0)
    for name in ("nucleus", "background0"):
        s = cats[name]
        np.testing.assert_allclose(s.noise_cov, COV, rtol=0.1)
        assert np.abs(s.texture_cov).max() < 0.1 * np.abs(COV).max()  # white noise is no texture
        assert s.cohorts is None
    np.testing.assert_allclose(cats["nucleus"].mean, (0.35, 0.2, 0.5), atol=0.01)


def test_fit_recovers_generated_texture_and_noise():
    """fit(paint + noise) gives back the generating statistics, texture correlation length included."""
    noise_cov = np.array([[2.0, 1.0, 0.5], [1.0, 2.0, 0.5], [0.5, 0.5, 1.0]]) * 1e-3
    truth = ColourStats([0.7, 0.5, 0.6], noise_cov, COV, texture_sigma=4.0)
    rng = np.random.default_rng(0)
    flat = np.zeros((192, 192), np.int64)
    images = [paint((192, 192), truth, rng) + noise(flat, [truth], rng) for _ in range(3)]
    fit = fit_colours(images, [flat] * 3, background_clusters=1, cohorts=0)["background0"]
    assert fit.texture_sigma == pytest.approx(4.0, rel=0.15)
    np.testing.assert_allclose(np.diag(fit.texture_cov), np.diag(COV), rtol=0.15)
    np.testing.assert_allclose(fit.noise_cov, noise_cov, rtol=0.1, atol=1e-4)
    np.testing.assert_allclose(fit.mean, truth.mean, atol=0.01)


def test_cohorts_and_background_clusters_are_ordered_by_brightness():
    rng = np.random.default_rng(1)
    lab = _grid_labels(128)
    colours = np.array([[0.2, 0.1, 0.3], [0.4, 0.3, 0.5], [0.6, 0.5, 0.7]])
    img = np.empty((128, 128, 3))
    img[:, :64] = (0.7, 0.45, 0.6)  # stroma
    img[:, 64:] = (0.95, 0.93, 0.94)  # glass
    ids = np.unique(lab[lab > 0])
    for i in ids:
        img[lab == i] = colours[i % 3]
    img += rng.normal(0, 0.01, img.shape)
    cats = fit_colours([img], [lab], background_clusters=2, cohorts=3, rng=np.random.default_rng(0))
    np.testing.assert_allclose(cats["nucleus"].cohorts, colours, atol=0.01)
    assert cats["background0"].mean.sum() < cats["background1"].mean.sum()
    np.testing.assert_allclose(cats["background1"].mean, (0.95, 0.93, 0.94), atol=0.02)
    again = fit_colours([img], [lab], background_clusters=2, cohorts=3, rng=np.random.default_rng(0))
    assert all(np.array_equal(again[k].cohorts, cats[k].cohorts) for k in cats)


def test_reinhard_moves_lab_stats_to_target():
    rng = np.random.default_rng(2)
    src = np.clip(rng.normal((0.55, 0.35, 0.6), 0.08, (64, 64, 3)), 0, 1)
    ref = np.clip(rng.normal((0.65, 0.45, 0.55), 0.05, (64, 64, 3)), 0, 1)
    target = lab_stats(ref)
    out = reinhard((src * 255).astype(np.uint8), target)
    assert out.dtype == np.float32 and out.shape == src.shape and 0 <= out.min() and out.max() <= 1
    got = lab_stats(out)
    np.testing.assert_allclose(got["mean"], target["mean"], atol=0.5)
    np.testing.assert_allclose(got["std"], target["std"], rtol=0.05)
    assert not np.allclose(lab_stats(src)["mean"], target["mean"], atol=2)


def test_texture_bank_patches_lie_inside_objects():
    lab = _grid_labels(128)
    img = np.empty((128, 128, 3), np.float32)
    img[:] = 0.9
    img[lab > 0] = (0.3, 0.2, 0.5)
    img[(lab > 0) & (lab % 2 == 0)] = (0.5, 0.4, 0.6)
    bank = texture_bank([img], [lab], patch=6, cohorts=3, max_patches=200)
    assert len(bank) == 2  # two distinct object colours -> two cohorts, dark first
    assert all(b.shape[1:] == (6, 6, 3) and b.dtype == np.float32 for b in bank)
    assert sum(len(b) for b in bank) == 200
    np.testing.assert_allclose(bank[0], np.broadcast_to([0.3, 0.2, 0.5], bank[0].shape), atol=1e-6)
    np.testing.assert_allclose(bank[1], np.broadcast_to([0.5, 0.4, 0.6], bank[1].shape), atol=1e-6)
    with pytest.raises(ValueError, match="large enough"):
        texture_bank([img], [lab], patch=40)


def test_fit_colours_cli_writes_json_and_textures(tmp_path: Path):
    data = write_dataset(tmp_path / "ds", n_images=2)
    out = tmp_path / "he.json"
    summary = fit_colours_cli(data, out, None, cohorts=2, background_clusters=1, textures=True, max_images=None)
    assert summary["images"] == 2 and summary["objects"] > 0 and set(summary["categories"]) == {"nucleus", "background0"}
    cats, ref, meta = load_colour_file(out)
    assert cats["nucleus"].mean.sum() < cats["background0"].mean.sum()  # purple nuclei darker than pink stroma
    assert ref is not None and len(ref["mean"]) == 3
    assert meta["split"] == "ds" and "fit-colours" in meta["command"] and meta["date"]
    bank = load_texture_bank(tmp_path / "he.textures.npz")
    assert 1 <= len(bank) <= 2 and bank[0].shape[1:] == (8, 8, 3)
    image = data / "images" / "img0.png"
    fit_colours_cli(data, out, image, cohorts=1, background_clusters=2, textures=False, max_images=1)
    cats, ref2, meta = load_colour_file(out)
    assert meta["images"] == 1 and meta["reference"] == str(image) and f"--reference {image}" in meta["command"]
    want = lab_stats(np.asarray(Image.open(image)))
    assert all(np.allclose(ref2[k], want[k]) for k in ("mean", "std"))
    with pytest.raises(InputError, match="no images"):
        (tmp_path / "empty" / "images").mkdir(parents=True)
        fit_colours_cli(tmp_path / "empty", out, None, 3, 2, False, None)


# --------------------------------------------------------------------------- colour files
def test_save_load_round_trip(tmp_path: Path):
    cats = {"nucleus": _stats(), "glass": _stats(cohorts=None, texture_sigma=3.5)}
    ref = {"mean": [60.0, 20.0, -10.0], "std": [15.0, 8.0, 6.0]}
    save_colours(tmp_path / "c.json", cats, reference=ref, meta={"split": "train"})
    back, ref2, meta = load_colour_file(tmp_path / "c.json")
    assert list(back) == ["nucleus", "glass"] and ref2 == ref and meta == {"split": "train"}
    for k in cats:
        for field in ("mean", "noise_cov", "texture_cov"):
            np.testing.assert_allclose(getattr(back[k], field), getattr(cats[k], field), rtol=1e-7)
    assert back["glass"].cohorts is None and back["glass"].texture_sigma == 3.5
    assert load_colours(tmp_path / "c.json").keys() == cats.keys()


@pytest.mark.parametrize("key, value, message", [
    ("noise_cov", [[1e-3, 0, 0], [0, 1e-3, 0]], "categories.nucleus.noise_cov: expected a 3x3 matrix, got 2x3"),
    ("texture_cov", [[1e-3, 0, 0], [0, -1e-3, 0], [0, 0, 1e-3]], "categories.nucleus.texture_cov: not positive semi-definite"),
    ("noise_cov", [[1e-3, 5e-4, 0], [0, 1e-3, 0], [0, 0, 1e-3]], "categories.nucleus.noise_cov: not symmetric"),
    ("mean", [0.5, 1.2, 0.3], "categories.nucleus.mean: values must lie in [0, 1]"),
    ("mean", [0.5, 0.3], "categories.nucleus.mean: expected a list of 3 numbers, got 2"),
    ("cohorts", [[0.5, 0.3]], "categories.nucleus.cohorts: expected a kx3 matrix, got 1x2"),
    ("texture_sigma", -1, "categories.nucleus.texture_sigma: expected a number"),
    ("colour", [0, 0, 0], "categories.nucleus.colour: unknown key"),
])
def test_bad_colour_file_names_file_and_key(tmp_path: Path, key, value, message):
    d = _stats().to_dict()
    d[key] = value
    path = tmp_path / "he.json"
    path.write_text(json.dumps({"version": 1, "categories": {"nucleus": d}}))
    with pytest.raises(InputError) as err:
        load_colours(path)
    assert str(err.value) == f"{path}: {message}" or str(err.value).startswith(f"{path}: {message}")
    assert "\n" not in str(err.value)


def test_bad_colour_file_structure(tmp_path: Path):
    path = tmp_path / "c.json"
    path.write_text('{"version": 1,\n "categories": {"a": }}')
    with pytest.raises(InputError, match=r"c.json: line 2: not valid JSON"):
        load_colours(path)
    path.write_text(json.dumps({"version": 2, "categories": {"a": {"mean": [0, 0, 0]}}}))
    with pytest.raises(InputError, match="version: expected 1"):
        load_colours(path)
    path.write_text(json.dumps({"version": 1, "categories": {"a": {"mean": [0, 0, 0]}}, "reference": {"mean": [1, 2, 3]}}))
    with pytest.raises(InputError, match=r"c.json: reference.std: missing"):
        load_colours(path)
    with pytest.raises(InputError, match="not found"):
        load_colours(tmp_path / "missing.json")
    # Inline colours of a scene script: missing covariances mean a flat colour; "where" is prefixed.
    s = ColourStats.from_dict({"mean": [0.1, 0.2, 0.3]}, where="s.yaml: line 4: layers[0].colour")
    assert not s.noise_cov.any() and s.cohorts is None
    with pytest.raises(InputError, match=r"^s.yaml: line 4: layers\[0\].colour.mean: missing$"):
        ColourStats.from_dict({}, where="s.yaml: line 4: layers[0].colour")
    with pytest.raises(InputError, match=r"^x.json: mean: missing$"):
        ColourStats.from_dict({}, where="x.json")


def test_builtin_he_monuseg():
    cats, ref, meta = load_colour_file(builtin_colours("he-monuseg"))
    assert {"nucleus", "background0", "background1"} <= set(cats)
    assert cats["nucleus"].mean.sum() < cats["background0"].mean.sum() < cats["background1"].mean.sum()
    assert cats["nucleus"].cohorts is not None and len(cats["nucleus"].cohorts) == 3
    assert ref is not None and 30 < ref["mean"][0] < 90
    assert meta["split"] == "train" and "monuseg/train" in meta["command"] and meta["date"]
    with pytest.raises(InputError, match="no built-in colour file"):
        builtin_colours("nope")


# --------------------------------------------------------------------------- generation
@pytest.mark.parametrize("cov", [COV, np.outer([1, 2, 3], [1, 2, 3]) * 1e-3, np.zeros((3, 3)),
                                 np.outer([3, 1, 2], [3, 1, 2]) * 1e-3 - 1e-13 * np.eye(3)])  # rank 1, slightly indefinite
def test_cholesky_psd(cov):
    lo = cholesky_psd(cov)
    assert np.allclose(lo, np.tril(lo)) and np.isfinite(lo).all()
    np.testing.assert_allclose(lo @ lo.T, cov, atol=1e-9)


def test_paint_colours_and_texture_statistics():
    rng = np.random.default_rng(0)
    flat = paint((20, 30), _stats(texture_cov=np.zeros((3, 3))), rng)
    assert flat.shape == (20, 30, 3) and flat.dtype == np.float32
    np.testing.assert_allclose(flat, np.broadcast_to([0.6, 0.4, 0.7], flat.shape), atol=1e-6)
    np.testing.assert_allclose(paint((5, 5), _stats(texture_cov=np.zeros((3, 3))), rng, cohort=0)[0, 0], [0.5, 0.3, 0.6])
    img = paint((300, 300), _stats(texture_cov=COV), rng)
    assert 0 <= img.min() and img.max() <= 1
    np.testing.assert_allclose(img.reshape(-1, 3).mean(0), [0.6, 0.4, 0.7], atol=0.02)
    np.testing.assert_allclose(np.cov(img.reshape(-1, 3).T), COV, rtol=0.25, atol=2e-4)
    # Smooth: neighbouring pixels are strongly correlated, unlike white noise.
    d = img[1:] - img[:-1]
    assert d.var() < 0.5 * img.var(axis=(0, 1)).mean()
    with pytest.raises(ValueError, match="cohort 3 out of range"):
        paint((5, 5), _stats(), rng, cohort=3)


def test_paint_with_shared_texture_fields():
    rng = np.random.default_rng(3)
    tex = texture_fields((64, 80), 4.0, rng)
    assert tex.shape == (64, 80, 3) and tex.dtype == np.float32
    assert abs(tex.std() - 1) < 0.3
    a = paint((64, 80), _stats(texture_cov=COV), rng, texture=tex)
    lo = np.linalg.cholesky(COV)
    np.testing.assert_allclose(a, np.clip(tex @ lo.T + [0.6, 0.4, 0.7], 0, 1), atol=1e-5)


def test_noise_per_owner_covariance():
    rng = np.random.default_rng(4)
    owner = np.full((200, 300), -1, np.int32)
    owner[:100] = 0
    owner[100:, :150] = 1
    other = COV[::-1, ::-1] * 2
    z = noise(owner, [_stats(), _stats(noise_cov=other)], rng)
    assert z.shape == (200, 300, 3) and z.dtype == np.float32
    assert not z[owner == -1].any()
    np.testing.assert_allclose(np.cov(z[owner == 0].T), COV, rtol=0.06, atol=5e-5)
    np.testing.assert_allclose(np.cov(z[owner == 1].T), other, rtol=0.06, atol=5e-5)
    with pytest.raises(ValueError, match="owner values"):
        noise(owner + 2, [_stats()], rng)


def test_determinism():
    stats = [_stats(), _stats(noise_cov=COV * 3)]
    owner = np.random.default_rng(9).integers(-1, 2, (40, 50))
    bank = np.random.default_rng(9).random((5, 8, 8, 3), dtype=np.float32)
    for seed in (0, 1):
        def run(s=seed):
            rng = np.random.default_rng(s)
            return (paint((40, 50), stats[0], rng), noise(owner, stats, rng), lattice_texture((40, 50), bank, rng),
                    texture_fields((40, 50), 2.0, rng))
        a, b = run(), run()
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c, d = run(0), run(1)
    assert not any(np.array_equal(x, y) for x, y in zip(c, d))


def test_lattice_texture_shape_range_and_blending():
    rng = np.random.default_rng(5)
    bank = np.repeat(np.repeat(rng.random((20, 1, 1, 3), dtype=np.float32), 8, 1), 8, 2)  # flat-coloured patches
    hard = lattice_texture((61, 47), bank, np.random.default_rng(6), overlap=0)
    soft = lattice_texture((61, 47), bank, np.random.default_rng(6), overlap=2)
    for t in (hard, soft):
        assert t.shape == (61, 47, 3) and t.dtype == np.float32
        assert bank.min() - 1e-6 <= t.min() and t.max() <= bank.max() + 1e-6
    def jump(t):
        return max(np.abs(np.diff(t, axis=0)).max(), np.abs(np.diff(t, axis=1)).max())
    # Feathered overlaps turn a seam into steps of at most ~1/3 of the colour difference.
    assert jump(soft) < 0.5 * jump(hard)
    sub = lattice_texture((30, 30), bank, rng, patch=5, overlap=1)
    assert sub.shape == (30, 30, 3)
    with pytest.raises(ValueError, match="overlap"):
        lattice_texture((30, 30), bank, rng, overlap=5)
