"""Whole-slide outputs written piece by piece: label pyramid, QuPath GeoJSON, summary and overlay."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

import imagecodecs
import numpy as np
import tifffile
from PIL import Image
from skimage.segmentation import find_boundaries

from pathseg.errors import OutputError
from pathseg.io.write import _UUID_NAMESPACE, _jsonable, atomic_open
from pathseg.measure.population import population_summary

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["AREA_BIN_EDGES_UM2", "GeoJsonStreamWriter", "summarise_slide", "write_ome_pyramid",
           "write_overlay_lowres"]

log = logging.getLogger(__name__)

# zlib-ng writes the same zlib streams as zlib, 3x faster. On label tiles level 2 is half the size
# of level 1 for 15% more time; level 6 is another 30% smaller but takes 3.5x as long.
_ZLIBNG = bool(getattr(getattr(imagecodecs, "ZLIBNG", None), "available", False))
_ZLIB_LEVEL = 2
# Rows read from the label array at once are capped so that a read stays below this many bytes.
_BAND_BYTES = 1 << 28
# Fixed log-spaced area bins (1-1000 µm², 30 bins) so that histograms of different slides line up.
AREA_BIN_EDGES_UM2 = tuple(float(f"{e:.4g}") for e in np.geomspace(1.0, 1000.0, 31))
# Positions and ids have no meaningful median.
_NOT_SUMMARISED = frozenset({"id", "centroid_x", "centroid_y"})
# Numeric codes that are categories: counted per value, not given a median.
_CATEGORICAL = frozenset({"size_class"})
_GREEN = np.array([0, 255, 0], np.uint8)
_BLUE = np.array([0, 0, 255], np.uint8)


def write_ome_pyramid(path: str | Path, labels: Any, mpp: float | None, tile: int = 512, min_size: int = 512,
                      max_id: int | None = None) -> None:
    """Write a 2-D label array (zarr or numpy) as a tiled, zlib-compressed pyramidal OME-TIFF, band by band.

    Level 0 is ``labels`` itself; SubIFD levels are ``labels[::2**k, ::2**k]`` (nearest neighbour, so
    ids stay ids) down to the first level whose longer side is < ``min_size``. Pixels are uint16 when
    the largest id (``max_id``, computed chunk by chunk when not given) fits, else uint32.
    """
    path = Path(path)
    shape = tuple(int(n) for n in labels.shape)
    if len(shape) != 2:
        raise ValueError(f"label array must be 2-D, got shape {shape}")
    if np.dtype(labels.dtype).kind not in "iu":
        raise ValueError(f"label array must have an integer dtype, got {labels.dtype}")
    if tile <= 0 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16 (TIFF), got {tile}")
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise ValueError(f"mpp must be a positive number or None, got {mpp!r}")
    if max_id is None:
        max_id = _max_label(labels)
    if max_id > np.iinfo(np.uint32).max:
        raise OutputError(f"{path}: label id {max_id} does not fit in 32 bits; relabel the instances first")
    dtype = np.dtype(np.uint16 if max_id <= np.iinfo(np.uint16).max else np.uint32)
    shapes = [shape]
    while max(shapes[-1]) >= min_size and min(shapes[-1]) > 1:
        shapes.append((-(-shape[0] // 2 ** len(shapes)), -(-shape[1] // 2 ** len(shapes))))
    metadata: dict[str, Any] = {"axes": "YX", "Name": path.name.split(".")[0]}
    if mpp is not None:
        metadata.update(PhysicalSizeX=mpp, PhysicalSizeXUnit="µm", PhysicalSizeY=mpp, PhysicalSizeYUnit="µm")
    with atomic_open(path) as fh, tifffile.TiffWriter(fh, bigtiff=True, ome=True) as tif:
        for level, level_shape in enumerate(shapes):
            step = 2**level
            options: dict[str, Any] = {}
            if mpp is not None:  # plain TIFF resolution too, for readers that ignore OME-XML
                options.update(resolution=(1e4 / (mpp * step),) * 2, resolutionunit="CENTIMETER")
            if level == 0:
                options.update(subifds=len(shapes) - 1, metadata=metadata)
            else:
                options.update(subfiletype=1, metadata=None)
            tif.write(_encoded_tiles(labels, step, level_shape, tile, dtype), shape=level_shape, dtype=dtype,
                      tile=(tile, tile), compression="zlib", photometric="minisblack", **options)


def _max_label(labels: Any) -> int:
    """Largest value of the array, reading one chunk at a time."""
    if not hasattr(labels, "blocks"):
        return int(np.asarray(labels).max(initial=0))
    # Chunk by chunk decodes each chunk once and copies nothing; bands would decode
    # chunks that straddle band edges twice and copy every pixel.
    rows, cols = labels.cdata_shape
    return max((int(labels.blocks[r, c].max(initial=0)) for r in range(rows) for c in range(cols)), default=0)


def _encode(tile: np.ndarray) -> bytes:
    """A tile as a zlib stream (TIFF compression 8, "Adobe deflate")."""
    data = np.ascontiguousarray(tile)
    if _ZLIBNG:
        return imagecodecs.zlibng_encode(data, level=_ZLIB_LEVEL)
    return zlib.compress(data, _ZLIB_LEVEL)  # pragma: no cover - imagecodecs builds without zlib-ng


def _tile_rows(labels: Any, step: int, shape: tuple[int, int], tile: int) -> Iterator[np.ndarray]:
    """``labels[::step, ::step]`` a tile row (``tile`` rows, fewer at the end) at a time."""
    height, width = shape
    chunk = int(labels.chunks[0]) if hasattr(labels, "chunks") else tile * step
    # Reads end on chunk-row boundaries of the source so that every chunk is decoded once
    # (a read that cuts a chunk decodes it whole: 512-row bands over 1920-row chunks cost 5x).
    span = chunk * max(1, round(tile * step / chunk))
    max_rows = max(tile, _BAND_BYTES // (width * np.dtype(labels.dtype).itemsize))
    if span // step > max_rows:  # very tall chunks on a very wide slide: bounded memory first
        span = max_rows * step
    pending = np.empty((0, width), labels.dtype)  # rows read but not yet yielded: less than a tile row
    start = 0
    while start < height:
        piece = None  # drop the previous read before the next one: two would double the memory
        boundary = (start * step // span + 1) * span  # next read boundary, in source rows
        stop = min(height, -(-boundary // step))
        piece = np.asarray(labels[start * step:stop * step:step, ::step])
        start = stop
        if len(pending):  # complete the tile row begun by the previous read
            take = min(tile - len(pending), len(piece))
            pending, piece = np.concatenate([pending, piece[:take]]), piece[take:]
            if len(pending) < tile and start < height:
                continue
            yield pending
            pending = np.empty((0, width), labels.dtype)
        full = len(piece) - len(piece) % tile
        for r in range(0, full, tile):
            yield piece[r:r + tile]
        pending = piece[full:].copy()  # a copy, so that the large piece can be freed
        if start >= height and len(pending):
            yield pending


def _encoded_tiles(labels: Any, step: int, shape: tuple[int, int], tile: int, dtype: np.dtype) -> Iterator[bytes]:
    """zlib-compressed tiles of ``labels[::step, ::step]`` in TIFF order (row-major), edge tiles zero-padded."""
    zero = _encode(np.zeros((tile, tile), dtype))  # most of a slide is background: encode it once
    pad = np.zeros((tile, tile), dtype)
    for row in _tile_rows(labels, step, shape, tile):
        for c0 in range(0, shape[1], tile):
            block = row[:, c0:c0 + tile]
            if not block.any():
                yield zero
            elif block.shape == (tile, tile):
                yield _encode(block.astype(dtype))
            else:
                pad[:] = 0
                pad[:block.shape[0], :block.shape[1]] = block
                yield _encode(pad)
        del row, block  # a view of the whole read: release it before the next one


class GeoJsonStreamWriter:
    """QuPath GeoJSON FeatureCollection written batch by batch; the file appears only on a clean exit.

    Features match :func:`pathseg.io.write.write_geojson`: objectType, classification {name, color},
    finite numeric measurements (NaN left out), ``instance_id``, and a UUID derived from
    ``f"{id_prefix}/{instance_id}"`` so that a re-run gives the same ids. ``classes`` (code ->
    (name, colour)) gives objects added with that code in ``add(codes=...)`` their own class.
    """

    _BATCH = 10_000  # features formatted at once: bounds the temporary arrays

    def __init__(self, path: str | Path, classification: str = "Nucleus", color: Sequence[int] = (0, 200, 0),
                 object_type: str = "detection", id_prefix: str = "slide",
                 classes: Mapping[int, tuple[str, Sequence[int]]] | None = None) -> None:
        self.path = Path(path)
        self.count = 0
        self._id_prefix = id_prefix

        def props(name: str, rgb: Sequence[int]) -> str:
            cls = json.dumps({"name": name, "color": [int(c) for c in rgb]}, separators=(",", ":"))
            return f',"properties":{{"objectType":{json.dumps(object_type)},"classification":{cls},'

        self._props = props(classification, color)
        self._class_props = {int(k): props(str(n), rgb) for k, (n, rgb) in (classes or {}).items()}
        self._cm: Any = None
        self._fh: IO[bytes] | None = None

    def __enter__(self) -> Self:
        self._cm = atomic_open(self.path)
        self._fh = self._cm.__enter__()
        self._fh.write(b'{"type":"FeatureCollection","features":[')
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        cm, fh = self._cm, self._fh
        self._cm = self._fh = None
        if cm is None:
            return False
        if exc_type is None:
            try:
                fh.write(b"]}")
            except BaseException as error:  # e.g. ENOSPC: let atomic_open remove the temp file
                cm.__exit__(type(error), error, error.__traceback__)
                raise
        return bool(cm.__exit__(exc_type, exc, tb))

    def add(self, ids: np.ndarray, rings: Sequence[np.ndarray], measurements: Mapping[str, np.ndarray] | None = None,
            codes: np.ndarray | None = None) -> int:
        """Append objects: ``rings[i]`` is the (n, 2) (x, y) outline of ``ids[i]`` in the level-0 frame.

        ``codes[i]`` picks the class of object i among the writer's ``classes`` (others: the default).
        """
        if self._fh is None:
            raise RuntimeError("GeoJsonStreamWriter.add() needs an open writer: use it in a 'with' block")
        ids = np.asarray(ids).ravel()
        if ids.dtype.kind not in "iu":
            raise ValueError(f"instance ids must be integers, got dtype {ids.dtype}")
        if len(rings) != len(ids):
            raise ValueError(f"{len(ids)} ids but {len(rings)} rings")
        columns = {str(k): np.asarray(v).ravel() for k, v in (measurements or {}).items()}
        for name, values in columns.items():
            if len(values) != len(ids):
                raise ValueError(f"measurement {name!r} has {len(values)} values for {len(ids)} ids")
        if codes is not None:
            codes = np.asarray(codes).ravel()
            if len(codes) != len(ids):
                raise ValueError(f"{len(codes)} class codes for {len(ids)} ids")
        written = 0
        for start in range(0, len(ids), self._BATCH):
            stop = start + self._BATCH
            text, n = self._features(ids[start:stop], rings[start:stop], {k: v[start:stop] for k, v in columns.items()},
                                     None if codes is None else codes[start:stop])
            if n:
                self._fh.write(((',' if self.count else '') + text).encode("utf-8"))
                self.count += n
                written += n
        return written

    def _features(self, ids: np.ndarray, rings: Sequence[np.ndarray], columns: Mapping[str, np.ndarray],
                  codes: np.ndarray | None = None) -> tuple[str, int]:
        """Features as comma-separated JSON objects, and how many."""
        coords = _ring_texts(rings)
        values = _measurement_texts(columns)
        default = self._props
        props_of = ([self._class_props.get(int(c), default) for c in codes.tolist()] if codes is not None
                    else None)
        parts = []
        for i, (instance, ring) in enumerate(zip(ids.tolist(), coords)):
            if ring is None:
                log.debug("instance %s: degenerate ring (< 3 distinct points), left out", instance)
                continue
            props = default if props_of is None else props_of[i]
            measured = ",".join(filter(None, [v[i] for v in values]))
            parts.append(f'{{"type":"Feature","id":"{_uuid5(f"{self._id_prefix}/{instance}")}",'
                         f'"geometry":{{"type":"Polygon","coordinates":[[{ring}]]}}'
                         f'{props}"measurements":{{{measured}}},"instance_id":{int(instance)}}}}}')
        return ",".join(parts), len(parts)


def _uuid5(name: str) -> str:
    """``str(uuid.uuid5(_UUID_NAMESPACE, name))`` at a third of the cost (it adds up over 10^6 objects)."""
    digest = bytearray(hashlib.sha1(_UUID_NAMESPACE.bytes + name.encode("utf-8")).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _measurement_texts(columns: Mapping[str, np.ndarray]) -> list[list[str | None]]:
    """Per numeric column, '"name":value' per object, None where the value is not finite."""
    texts = []
    for name, values in columns.items():
        if values.dtype == bool or values.dtype.kind not in "iuf":
            continue  # as write_geojson: only numbers are QuPath measurements
        key = json.dumps(name) + ":"
        if values.dtype.kind == "f":
            # repr() is what json.dumps writes for a float.
            texts.append([key + repr(v) if math.isfinite(v) else None for v in values.tolist()])
        else:
            texts.append([key + str(v) for v in values.tolist()])
    return texts


def _ring_texts(rings: Sequence[np.ndarray]) -> list[str | None]:
    """Each ring as JSON positions '[x,y],[x,y],...', closed, counter-clockwise, 3 decimals; None if degenerate."""
    if not len(rings):
        return []
    try:
        xy = np.concatenate(rings).astype(np.float64, copy=False)
    except ValueError as exc:
        raise ValueError(f"rings must be (n, 2) arrays of (x, y): {exc}") from exc
    lengths = np.fromiter(map(len, rings), np.int64, len(rings))
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"rings must be (n, 2) arrays of (x, y), got {xy.shape[1:]} columns")
    if not np.isfinite(xy).all():
        raise ValueError("ring coordinates must be finite")
    starts = np.cumsum(lengths) - lengths
    filled = lengths > 0
    is_open = np.zeros(len(rings), bool)
    is_open[filled] = (xy[starts[filled]] != xy[starts[filled] + lengths[filled] - 1]).any(axis=1)
    if is_open.any():  # rare: close those rings and start again
        closed = [np.vstack([r, r[:1]]) if o else r for r, o in zip(rings, is_open.tolist())]
        return _ring_texts(closed)
    valid = lengths >= 4  # GeoJSON: a closed ring has at least 4 positions (degenerate ones are skipped)
    if not valid.any():
        return [None] * len(rings)
    # Twice the signed area of each ring: shoelace terms of consecutive vertices, with
    # the pairs that straddle two rings zeroed.
    cross = np.append(xy[:-1, 0] * xy[1:, 1] - xy[1:, 0] * xy[:-1, 1], 0.0)
    cross[starts + lengths - 1] = 0.0
    area2 = np.add.reduceat(cross, np.minimum(starts, len(cross) - 1))
    for k in np.flatnonzero(valid & (area2 < 0)):  # RFC 7946: exteriors counter-clockwise
        xy[starts[k]:starts[k] + lengths[k]] = xy[starts[k]:starts[k] + lengths[k]][::-1].copy()
    text, offsets = _format_positions(xy)
    begin = offsets[starts].tolist()
    end = (offsets[starts + lengths] - 1).tolist()  # -1: the trailing comma
    return [text[b:e] if ok else None for b, e, ok in zip(begin, end, valid.tolist())]


# "000".."999" as ASCII codes, to write digits three at a time.
_DIGITS = np.array([list(f"{i:03d}".encode()) for i in range(1000)], np.uint8)
_ZERO = ord("0")


def _format_positions(xy: np.ndarray) -> tuple[str, np.ndarray]:
    """All positions as '[x,y],' with x, y rounded to 3 decimals, and each position's start offset.

    Python's float formatting costs ~0.3 µs a number, ~1.5 s for 100k nuclei outlines; here
    the digits are laid out in a byte matrix with numpy and the unneeded characters
    (leading zeros, trailing decimal zeros) masked away, several times faster. The numbers
    are valid JSON that parse to round(value, 3).
    """
    q = np.rint(xy.ravel() * 1000.0).astype(np.int64)  # thousandths
    whole, frac = np.divmod(np.abs(q), 1000)
    n_groups = max(1, -(-len(str(int(whole.max(initial=0)))) // 3))
    n_int = 3 * n_groups
    width = n_int + 5  # sign, integer digits, point, 3 decimals
    chars = np.empty((len(q), width), np.uint8)
    keep = np.empty(chars.shape, bool)
    chars[:, 0], keep[:, 0] = ord("-"), q < 0
    rest = whole
    for g in range(n_groups - 1, -1, -1):  # least significant group last
        rest, group = np.divmod(rest, 1000)
        chars[:, 1 + 3 * g:4 + 3 * g] = _DIGITS[group]
    powers = 10 ** np.arange(n_int - 1, -1, -1, dtype=np.int64)
    powers[-1] = 0  # the units digit is always written
    np.greater_equal(whole[:, None], powers, out=keep[:, 1:n_int + 1])
    chars[:, n_int + 1] = ord(".")
    chars[:, n_int + 2:] = _DIGITS[frac]
    keep[:, -1] = chars[:, -1] != _ZERO  # a decimal is written unless it and all after it are 0
    keep[:, -2] = keep[:, -1] | (chars[:, -2] != _ZERO)
    keep[:, -3] = keep[:, -2] | (chars[:, -3] != _ZERO)
    keep[:, n_int + 1] = keep[:, -3]
    n = len(xy)
    row = np.empty((n, 2 * width + 4), np.uint8)
    mask = np.ones(row.shape, bool)
    row[:, 0], row[:, width + 1], row[:, 2 * width + 2], row[:, 2 * width + 3] = b"[,],"
    chars, keep = chars.reshape(n, 2 * width), keep.reshape(n, 2 * width)
    row[:, 1:width + 1], mask[:, 1:width + 1] = chars[:, :width], keep[:, :width]
    row[:, width + 2:2 * width + 2], mask[:, width + 2:2 * width + 2] = chars[:, width:], keep[:, width:]
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(mask.sum(axis=1), out=offsets[1:])
    return row[mask].tobytes().decode("ascii"), offsets


def summarise_slide(table: Mapping[str, np.ndarray], tissue_area_um2: float | None,
                    extra: Mapping[str, Any] | None = None, size_threshold_um2: float | None = None) -> dict:
    """Slide-level summary: object count, density per mm² of tissue, area distribution, column medians.

    With ``size_threshold_um2`` a ``population`` block (small/large counts and densities, see
    :func:`pathseg.measure.population_summary`) is added.
    """
    columns = {str(k): np.asarray(v).ravel() for k, v in table.items()}
    n = len(columns["id"]) if "id" in columns else (len(next(iter(columns.values()))) if columns else 0)
    tissue = math.nan if tissue_area_um2 is None else float(tissue_area_um2)
    tissue_mm2 = tissue / 1e6
    area = columns.get("area_um2", np.empty(0)).astype(np.float64)
    summary: dict[str, Any] = {
        "n_objects": n,
        "tissue_area_mm2": tissue_mm2,
        "density_per_mm2": n / tissue_mm2 if tissue_mm2 > 0 else None,
        "area_um2": _distribution(area[np.isfinite(area)]),
        "medians": {},
        "counts_by": {},
    }
    for name, values in columns.items():
        if name in _NOT_SUMMARISED:
            continue
        if name in _CATEGORICAL or values.dtype.kind in "OUSb":  # categories, e.g. a size class: how many objects each
            kinds, counts = np.unique(values.astype(str), return_counts=True)
            summary["counts_by"][name] = dict(zip(kinds.tolist(), counts.tolist()))
        elif values.dtype.kind in "iuf":
            finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
            summary["medians"][name] = float(np.median(finite)) if len(finite) else None
    if size_threshold_um2 is not None:
        summary["population"] = population_summary(columns, tissue_mm2, size_threshold_um2)
    if extra:
        summary.update(extra)
    return _jsonable(summary)


def _distribution(values: np.ndarray) -> dict[str, Any]:
    """Mean, sample SD, percentiles and a fixed-edge histogram (below/above count values outside the edges)."""
    edges = np.asarray(AREA_BIN_EDGES_UM2)
    counts = np.histogram(values, bins=edges)[0] if len(values) else np.zeros(len(edges) - 1, np.int64)
    stats: dict[str, Any] = {"n": len(values)}
    if len(values):
        p5, p25, p50, p75, p95 = np.percentile(values, [5, 25, 50, 75, 95])
        stats.update(mean=float(values.mean()), sd=float(values.std(ddof=1)) if len(values) > 1 else None,
                     median=p50, p5=p5, p25=p25, p75=p75, p95=p95)
    else:
        stats.update(dict.fromkeys(("mean", "sd", "median", "p5", "p25", "p75", "p95")))
    stats["histogram"] = {"edges": list(AREA_BIN_EDGES_UM2), "counts": counts.tolist(),
                          "below": int((values < edges[0]).sum()), "above": int((values > edges[-1]).sum())}
    return stats


def write_overlay_lowres(path: str | Path, thumbnail: np.ndarray, labels: Any, tissue: np.ndarray | None,
                         max_size: int = 2048, centroids: np.ndarray | None = None) -> None:
    """Write a PNG of the slide thumbnail with object outlines (green) and the tissue outline (blue).

    ``labels`` (zarr or numpy, any resolution) is sampled by nearest neighbour onto the thumbnail
    grid, its extent mapped onto the thumbnail's by ratio. ``tissue`` is a bool mask of the
    thumbnail's shape. ``centroids`` ((n, 2) (x, y) in ``labels`` pixels), when given, marks objects
    that vanish at this scale with a single green pixel.
    """
    path = Path(path)
    thumb = np.asarray(thumbnail)
    if thumb.ndim != 3 or thumb.shape[-1] != 3:
        raise ValueError(f"thumbnail must be (H, W, 3) RGB, got shape {thumb.shape}")
    if tissue is not None and np.shape(tissue) != thumb.shape[:2]:
        raise ValueError(f"tissue mask {np.shape(tissue)} does not match the thumbnail {thumb.shape[:2]}")
    h, w = thumb.shape[:2]
    scale = min(1.0, max_size / max(h, w))
    oh, ow = max(1, round(h * scale)), max(1, round(w * scale))
    out = thumb.astype(np.uint8, copy=True)
    if (oh, ow) != (h, w):
        out = np.asarray(Image.fromarray(out).resize((ow, oh), Image.Resampling.BOX))
        out = out.copy()
    if tissue is not None:
        mask = np.asarray(tissue, bool)[np.ix_(_nearest(oh, h), _nearest(ow, w))]
        out[find_boundaries(mask, mode="inner")] = _BLUE
    height, width = (int(n) for n in labels.shape)
    sampled = _sample_nearest(labels, _nearest(oh, height), _nearest(ow, width))
    out[find_boundaries(sampled, mode="inner")] = _GREEN
    if centroids is not None and len(centroids):
        c = np.asarray(centroids, np.float64).reshape(-1, 2)
        c = c[np.isfinite(c).all(axis=1)]
        r = np.clip((c[:, 1] * oh / height).astype(np.int64), 0, oh - 1)
        k = np.clip((c[:, 0] * ow / width).astype(np.int64), 0, ow - 1)
        gone = sampled[r, k] == 0  # the object left no pixel on the thumbnail grid there
        out[r[gone], k[gone]] = _GREEN
    with atomic_open(path) as fh:
        Image.fromarray(out).save(fh, format="PNG")


def _nearest(n_out: int, n_in: int) -> np.ndarray:
    """Index in a grid of ``n_in`` of the cell under the centre of each of ``n_out`` cells."""
    return np.minimum(((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)


def _sample_nearest(labels: Any, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``labels[rows][:, cols]``, reading a zarr array a few chunk rows at a time."""
    if not hasattr(labels, "oindex"):
        return np.asarray(labels)[np.ix_(rows, cols)]
    out = np.zeros((len(rows), len(cols)), labels.dtype)
    # Bands aligned to the chunk grid: each chunk is decoded once and only the
    # sampled pixels are kept.
    span = int(labels.chunks[0]) * max(1, 4096 // int(labels.chunks[0]))
    splits = np.flatnonzero(np.diff(rows // span)) + 1
    for part in np.split(np.arange(len(rows)), splits):
        if len(part):
            out[part] = labels.oindex[rows[part], cols]
    return out
