"""Geometry of the synthetic histology generator: random fields, regions, ribbons, shapes, placement."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.morphology import skeletonize

from pathseg.errors import InputError
from pathseg.synth.fields import (
    fmm_grow,
    fmm_regions,
    gaussian_field,
    pick_regions,
    ribbons,
    travel_time,
    velocity_field,
    voronoi_regions,
)
from pathseg.synth.placement import (
    PlacementError,
    capacity_check,
    crop_slices,
    paste,
    place_masks,
)
from pathseg.synth.shapes import PatchBank, ellipse_mask, fmm_cell_mask, irregular_mask
from tests.conftest import synthetic_nuclei

SHAPE = (120, 150)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def disc_seeds(shape: tuple[int, int], centres: list[tuple[int, int]], r: int) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    seeds = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centres, start=1):
        seeds[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    return seeds


# --- determinism -------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda g: gaussian_field(SHAPE, 2.0, g),
    lambda g: gaussian_field(SHAPE, 12.0, g),
    lambda g: velocity_field(SHAPE, g),
    lambda g: voronoi_regions(SHAPE, 7, g),
    lambda g: fmm_regions(SHAPE, 7, g),
    lambda g: ribbons(SHAPE, g),
    lambda g: fmm_grow(disc_seeds(SHAPE, [(30, 30), (60, 90)], 5), g, 6.0)[0],
    lambda g: irregular_mask(9, 6, 0.4, g),
    lambda g: fmm_cell_mask(ellipse_mask(5, 4, 0.3), g, 6.0),
])
def test_same_seed_same_output_and_seeds_differ(make):
    a, b, c = make(rng(1)), make(rng(1)), make(rng(2))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


# --- fields ------------------------------------------------------------------------------------

@pytest.mark.parametrize("sigma", [1.5, 3.0, 8.0, 30.0])
def test_gaussian_field_stats_and_correlation_length(sigma):
    f = gaussian_field((200, 200), sigma, rng(3))
    assert f.dtype == np.float32 and f.shape == (200, 200)
    assert abs(float(f.mean())) < 1e-4 and abs(float(f.std()) - 1) < 1e-3
    if sigma <= 8:
        lag = round(sigma)
        near = np.corrcoef(f[:, :-lag].ravel(), f[:, lag:].ravel())[0, 1]
        far = np.corrcoef(f[:, : -6 * lag].ravel(), f[:, 6 * lag:].ravel())[0, 1]
        assert near > 0.5 and abs(far) < 0.15
    values = np.concatenate([gaussian_field((64, 64), sigma, rng(s)).ravel() for s in range(8)])
    # Gaussian marginals (uniform noise filtered): ~68% within one std, few beyond three.
    assert 0.62 < np.mean(np.abs(values) < 1) < 0.74
    assert np.mean(np.abs(values) > 3) < 0.01


def test_velocity_field_positive_float64():
    v = velocity_field(SHAPE, rng(), sigma=10, spread=3.0, floor=0.2)
    assert v.dtype == np.float64 and v.shape == SHAPE
    assert v.min() >= 0.2 and v.max() > 1


def test_travel_time_matches_distance_at_unit_speed():
    init = np.zeros((40, 60), bool)
    init[:, 0] = True
    t = travel_time(init, np.ones((40, 60)))
    assert t.dtype == np.float64 and (t[init] == 0).all()
    assert np.allclose(t[:, 30], 29.5, atol=1.0)  # front starts half a pixel off the init pixels
    assert np.allclose(travel_time(init, np.full((40, 60), 2.0))[:, 30], t[:, 30] / 2, atol=0.1)
    with pytest.raises(ValueError):
        travel_time(np.zeros((5, 5), bool), np.ones((5, 5)))
    assert (travel_time(np.ones((5, 5), bool), np.ones((5, 5))) == 0).all()


def test_voronoi_regions_cover_labels_and_are_exact():
    shape, n = (97, 131), 9
    labels = voronoi_regions(shape, n, rng(4))
    assert labels.dtype == np.int32 and labels.shape == shape
    assert set(np.unique(labels)) == set(range(n))
    # Same draw as the implementation: brute-force nearest seed must agree (ties aside).
    sy, sx = np.divmod(rng(4).choice(shape[0] * shape[1], size=n, replace=False), shape[1])
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    d = (yy[None] - sy[:, None, None]) ** 2 + (xx[None] - sx[:, None, None]) ** 2
    assert np.mean(labels != d.argmin(0)) < 0.003


@pytest.mark.parametrize("n", [1, 2, 11, 30])
def test_fmm_regions_cover_labels_with_curved_borders(n):
    labels = fmm_regions((150, 140), n, rng(n))
    assert labels.dtype == np.int32 and labels.shape == (150, 140)
    assert set(np.unique(labels)) == set(range(n))


def test_fmm_regions_rejects_too_many_regions():
    with pytest.raises(ValueError):
        fmm_regions((8, 8), 10, rng())


def test_pick_regions_fraction():
    fractions = []
    for s in range(30):
        labels = voronoi_regions((60, 60), 7, rng(s))
        fractions.append(pick_regions(labels, 7, 5, rng(100 + s)).mean())
    assert abs(np.mean(fractions) - 5 / 7) < 0.08
    labels = voronoi_regions((60, 60), 7, rng())
    assert pick_regions(labels, 7, 7, rng()).all() and not pick_regions(labels, 7, 0, rng()).any()


def _thickness(mask: np.ndarray) -> float:
    """Mean ribbon thickness in px: area / skeleton length."""
    return mask.sum() / max(skeletonize(mask).sum(), 1)


def test_ribbons_without_region_are_thin_and_not_empty():
    for s in range(5):
        r = ribbons((200, 200), rng(s), width=(3, 6))
        assert r.dtype == bool and 0 < r.mean() < 0.5
        assert _thickness(r) < 12


def test_ribbons_border_the_region_from_inside_and_follow_width():
    labels = voronoi_regions((200, 200), 7, rng(5))
    region = ~pick_regions(labels, 7, 4, rng(6))
    r = ribbons((200, 200), rng(7), region=region, width=(3, 6))
    assert r.any() and not (r & ~region).any()
    assert _thickness(r) < 15
    # Strands stay near the region border (offsets of at most ~2 widths + width).
    dist = ndi.distance_transform_edt(region)
    assert np.percentile(dist[r], 90) < 25
    assert not ribbons((50, 50), rng(), region=np.zeros((50, 50), bool)).any()
    # Thickness follows the interval width (the paper's "thickness correlates with the interval").
    thin = np.mean([_thickness(ribbons((200, 200), rng(s), region=region, width=(2, 3))) for s in range(4)])
    wide = np.mean([_thickness(ribbons((200, 200), rng(s), region=region, width=(10, 12))) for s in range(4)])
    assert wide > 2 * thin


def test_fmm_grow_keeps_seeds_and_splits_touching_cells():
    seeds = disc_seeds((80, 120), [(40, 40), (40, 62), (15, 105)], 6)
    labels, times = fmm_grow(seeds, rng(8), grow=10.0, sigma=6.0, spread=0.3)
    assert labels.dtype == np.int32 and times.shape == seeds.shape
    assert np.array_equal(labels[seeds > 0], seeds[seeds > 0])
    for k in (1, 2, 3):
        cell = labels == k
        assert cell.sum() > 1.5 * (seeds == k).sum()
        assert ndi.label(cell)[1] == 1
    # Cells 1 and 2 grew into each other: they touch, and meet roughly half-way.
    assert (ndi.binary_dilation(labels == 1) & (labels == 2)).any()
    border_cols = np.flatnonzero(((labels == 1)[:, 1:] & (labels == 2)[:, :-1]).any(0) |
                                 ((labels == 2)[:, 1:] & (labels == 1)[:, :-1]).any(0))
    assert np.all(np.abs(border_cols - 51) < 6)
    assert (labels[0, :20] == 0).all() and (times[seeds > 0] == 0).all()
    assert (times[labels > 0][seeds[labels > 0] == 0] <= 10.0).all()
    empty_labels, empty_times = fmm_grow(np.zeros((10, 10), np.int32), rng(), 5.0)
    assert not empty_labels.any() and np.isinf(empty_times).all()


# --- shapes ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("a", "b", "theta"), [(3, 3, 0.0), (8, 4, 0.3), (12, 5, 2.0), (20, 9, -1.0)])
def test_ellipse_area_and_centring(a, b, theta):
    m = ellipse_mask(a, b, theta)
    assert m.dtype == bool and m.shape[0] % 2 == 1 and m.shape[1] % 2 == 1
    assert abs(m.sum() / (np.pi * a * b) - 1) < 0.12
    assert m[m.shape[0] // 2, m.shape[1] // 2]
    assert np.array_equal(m, m[::-1, ::-1])  # point-symmetric about the centre pixel
    assert ellipse_mask(0.5, 0.5, 0).sum() >= 1
    with pytest.raises(ValueError):
        ellipse_mask(0.2, 3, 0)


def test_irregular_mask_connected_and_irregular():
    g = rng(9)
    for _ in range(60):
        a, b = g.uniform(0.5, 25, 2)
        m = irregular_mask(a, b, g.uniform(0, np.pi), g, roughness=g.uniform(0, 0.6), lobes=int(g.integers(2, 10)))
        assert m.shape[0] % 2 == 1 and m.shape[1] % 2 == 1
        assert m[m.shape[0] // 2, m.shape[1] // 2]
        assert ndi.label(m)[1] == 1
    smooth = ellipse_mask(15, 10, 0.5)
    rough = irregular_mask(15, 10, 0.5, rng(10), roughness=0.4)
    assert not np.array_equal(smooth, rough)


def test_fmm_cell_mask_grows_around_centred_seed():
    seed = ellipse_mask(5, 3, 0.7)
    cell = fmm_cell_mask(seed, rng(11), grow=6.0)
    assert cell.shape[0] % 2 == 1 and cell.shape[1] % 2 == 1
    assert cell.sum() > 2 * seed.sum()
    cy, cx = cell.shape[0] // 2, cell.shape[1] // 2
    sh, sw = seed.shape
    assert cell[cy - sh // 2: cy - sh // 2 + sh, cx - sw // 2: cx - sw // 2 + sw][seed].all()
    assert ndi.label(cell)[1] == 1


def _bank() -> PatchBank:
    images, labels = zip(*(synthetic_nuclei(96, n=8, seed=s) for s in range(2)))
    return PatchBank.from_labelled(list(images), list(labels), max_patches=12, min_area=20, rng=rng())


def test_patch_bank_round_trip_and_rotation(tmp_path):
    bank = _bank()
    assert len(bank) == 12
    assert all(r.dtype == np.float32 and r.shape[:2] == m.shape for r, m in zip(bank.rgb, bank.mask))
    path = tmp_path / "nuclei.npz"
    bank.save(path)
    back = PatchBank.load(path)
    assert len(back) == len(bank)
    for r0, m0, r1, m1 in zip(bank.rgb, bank.mask, back.rgb, back.mask):
        assert np.array_equal(r0, r1) and np.array_equal(m0, m1)
    g = rng(12)
    for _ in range(20):
        i_state = g.bit_generator.state
        rgb, mask = back.sample(g)
        g2 = np.random.default_rng()
        g2.bit_generator.state = i_state
        i = int(g2.integers(len(back)))
        assert rgb.shape[:2] == mask.shape and rgb.dtype == np.float32 and mask.dtype == bool
        assert abs(mask.sum() / back.mask[i].sum() - 1) < 0.15
        assert not mask[0].any() and not mask[-1].any()  # bounding box + 1 px margin
    a, b = back.sample(rng(13)), back.sample(rng(13))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_patch_bank_load_rejects_malformed(tmp_path):
    text = tmp_path / "bank.npz"
    text.write_text("hello")
    with pytest.raises(InputError, match="not a patch bank"):
        PatchBank.load(text)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(InputError, match=r"other\.npz: not a patch bank \(missing arrays"):
        PatchBank.load(other)
    bank = _bank()
    bad = tmp_path / "bad.npz"
    with open(bad, "wb") as f:
        np.savez(f, format=np.array("pathseg-patch-bank-1"), shapes=np.array([[4, 4]]),
                 rgb=np.zeros(47, np.float32), mask=np.zeros(16, bool))
    with pytest.raises(InputError, match="rgb holds 47 values"):
        PatchBank.load(bad)
    with pytest.raises(InputError, match="not found"):
        PatchBank.load(tmp_path / "missing.npz")
    with pytest.raises(InputError, match="no labelled object"):
        PatchBank.from_labelled([np.zeros((8, 8, 3), np.uint8)], [np.zeros((8, 8), np.int32)])
    assert len(bank) > 0


# --- placement ---------------------------------------------------------------------------------

def _stamp(canvas: tuple[int, int], masks, positions) -> np.ndarray:
    labels = np.zeros(canvas, np.int32)
    count = np.zeros(canvas, np.int32)
    for k, (m, p) in enumerate(zip(masks, positions), start=1):
        if p is None:
            continue
        (cs, ps) = crop_slices(canvas, m.shape, p)
        count[cs] += m[ps]
        paste(labels, k, p, where=m)
    return labels, count


def _masks(n: int, seed: int, lo: float = 3, hi: float = 7) -> list[np.ndarray]:
    g = rng(seed)
    return [ellipse_mask(*g.uniform(lo, hi, 2), g.uniform(0, np.pi)) for _ in range(n)]


def test_place_masks_without_overlap_is_disjoint_and_centres_inside():
    canvas = (150, 150)
    masks = _masks(80, 14)
    occupied = np.zeros(canvas, bool)
    occupied[:20] = True
    pos = place_masks(canvas, masks, rng(15), overlap=False, occupied=occupied)
    assert sum(p is not None for p in pos) >= 70
    labels, count = _stamp(canvas, masks, pos)
    assert count.max() == 1
    assert not (labels[:20] > 0).any()
    assert np.array_equal(occupied[20:], labels[20:] > 0)  # updated in place
    for m, p in zip(masks, pos):
        if p is not None:
            cy, cx = p[0] + m.shape[0] // 2, p[1] + m.shape[1] // 2
            assert 0 <= cy < canvas[0] and 0 <= cx < canvas[1]


def test_place_masks_gap_respected():
    canvas, gap = (120, 120), 3
    masks = _masks(40, 16)
    pos = place_masks(canvas, masks, rng(17), overlap=False, gap=gap)
    labels, _ = _stamp(canvas, masks, pos)
    yy, xx = np.mgrid[-gap:gap + 1, -gap:gap + 1]
    disc = yy * yy + xx * xx <= gap * gap
    for k in np.unique(labels[labels > 0]):
        ring = ndi.binary_dilation(labels == k, disc)
        assert set(np.unique(labels[ring])) <= {0, int(k)}


def test_place_masks_allowed_centre_or_whole_patch():
    canvas = (100, 100)
    allowed = np.zeros(canvas, bool)
    allowed[30:70, 30:70] = True
    masks = _masks(20, 18)
    pos = place_masks(canvas, masks, rng(19), allowed=allowed)
    for m, p in zip(masks, pos):
        assert allowed[p[0] + m.shape[0] // 2, p[1] + m.shape[1] // 2]
    pos = place_masks(canvas, masks, rng(20), allowed=allowed, centre_allowed=False, overlap=False)
    labels, count = _stamp(canvas, masks, pos)
    assert count.max() == 1 and not (labels[~allowed] > 0).any()
    assert place_masks(canvas, masks, rng(), allowed=np.zeros(canvas, bool)) == [None] * 20
    assert place_masks(canvas, [], rng()) == []


def test_place_masks_overlap_allowed_may_overlap_and_clips():
    canvas = (30, 30)
    masks = _masks(40, 21, 5, 9)
    pos = place_masks(canvas, masks, rng(22))
    assert all(p is not None for p in pos)
    _, count = _stamp(canvas, masks, pos)
    assert count.max() > 1


def test_impossible_placement_returns_none_quickly():
    canvas = (60, 60)
    occupied = np.ones(canvas, bool)
    occupied[::7, ::7] = False  # isolated free pixels: no ellipse fits anywhere
    masks = _masks(50, 23)
    t0 = time.perf_counter()
    pos = place_masks(canvas, masks, rng(24), overlap=False, occupied=occupied, tries=200)
    assert pos == [None] * 50
    assert time.perf_counter() - t0 < 1.0
    # A full canvas: the pool of free centres is empty and placement stops at once.
    pos = place_masks(canvas, masks, rng(25), overlap=False, occupied=np.ones(canvas, bool))
    assert pos == [None] * 50


def test_capacity_check_message():
    capacity_check("immune", 10, 100.0, 9000.0)
    with pytest.raises(PlacementError) as err:
        capacity_check("immune", 80, 350.0, 9000.0)
    msg = str(err.value)
    assert msg.startswith("layer 'immune': 80 objects of ~350 px^2 need ~28000 px^2")
    assert "only 9000 px^2 are free; lower count or size" in msg
    assert isinstance(err.value, InputError)


def test_paste_and_crop_slices_clip_at_borders():
    canvas = np.zeros((10, 12, 3), np.float32)
    patch = np.ones((4, 5, 3), np.float32)
    where = np.ones((4, 5), bool)
    where[0, 0] = False
    paste(canvas, patch, (-1, 9), where=where)
    assert canvas[..., 0].sum() == 3 * 3  # rows 0..2, cols 9..11 (the masked pixel is clipped off)
    (cs, ps) = crop_slices((10, 12), (4, 5), (8, -2))
    assert (cs, ps) == ((slice(8, 10), slice(0, 3)), (slice(0, 2), slice(2, 5)))
    before = canvas.copy()
    paste(canvas, patch, (50, 50))  # entirely outside: nothing happens
    paste(canvas, patch, (-10, 0))
    assert np.array_equal(before, canvas)
    grey = np.zeros((5, 5), np.int32)
    paste(grey, 7, (1, 1), where=np.ones((2, 2), bool))
    assert grey.sum() == 28
