"""Write results atomically: label maps, overlays, CSV tables, QuPath GeoJSON and JSON."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage
from skimage.measure import approximate_polygon, find_contours
from skimage.segmentation import find_boundaries

from pathseg.errors import OutputError

__all__ = ["atomic_open", "ensure_output_dir", "instance_polygons", "write_geojson", "write_json",
           "write_label_map", "write_overlay", "write_table_csv"]

log = logging.getLogger(__name__)

# Fixed namespace so the same object always gets the same QuPath UUID across runs.
_UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://pathseg/instances")
_TMP_MARK = ".pathseg-tmp-"


@contextmanager
def atomic_open(path: str | Path) -> Iterator[IO[bytes]]:
    """Open a binary file that appears under ``path`` only once it is completely written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{_TMP_MARK}{uuid.uuid4().hex[:8]}")
    try:
        # open() lets the umask decide permissions (tempfile would force 0o600, making
        # results unreadable to colleagues on a shared drive); "x" never clobbers a file.
        fh = open(tmp, "xb")
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    try:
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())  # without this a crash right after rename can leave an empty file
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from exc
        raise


def write_label_map(path: str | Path, labels: np.ndarray) -> None:
    """Write an instance label map as a 16-bit PNG or a 16/32-bit TIFF."""
    path = Path(path)
    labels = _check_labels(labels)
    max_id = int(labels.max(initial=0))
    suffix = path.suffix.lower()
    if max_id > np.iinfo(np.uint32).max:
        raise OutputError(f"{path}: label id {max_id} does not fit in 32 bits; relabel the instances first")
    if suffix in (".tif", ".tiff"):
        dtype = np.uint16 if max_id <= 65535 else np.uint32
        with atomic_open(path) as fh:
            # zlib (deflate) is built into Python and label maps compress ~50x.
            tifffile.imwrite(fh, labels.astype(dtype), compression="zlib", photometric="minisblack")
    elif suffix == ".png":
        if max_id > 65535:
            raise OutputError(f"{path}: label id {max_id} exceeds the 16-bit PNG limit (65535); use a .tif file name")
        image = Image.fromarray(labels.astype(np.uint16))
        with atomic_open(path) as fh:
            image.save(fh, format="PNG")
    else:
        raise OutputError(f"{path}: unsupported label map format {path.suffix!r}; use .png or .tif")


def write_overlay(
    path: str | Path, image: np.ndarray, labels: np.ndarray, color: tuple[int, int, int] = (0, 255, 0)
) -> None:
    """Write the image with every instance outline drawn in ``color``."""
    path = Path(path)
    labels = _check_labels(labels)
    if image.ndim != 3 or image.shape[-1] != 3 or image.shape[:2] != labels.shape:
        raise ValueError(f"overlay needs an (H, W, 3) image matching labels {labels.shape}, got {image.shape}")
    out = np.array(image, dtype=np.uint8, copy=True)
    out[find_boundaries(labels, mode="inner")] = np.asarray(color, dtype=np.uint8)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    with atomic_open(path) as fh:
        Image.fromarray(out).save(fh, format=fmt)


def write_table_csv(path: str | Path, table: Mapping[str, np.ndarray] | list[dict]) -> None:
    """Write a column table (name -> array) or a list of row dicts as CSV with a header."""
    path = Path(path)
    if isinstance(table, Mapping):
        header = list(table)
        columns = [np.asarray(table[k]).ravel() for k in header]
        lengths = {len(c) for c in columns}
        if len(lengths) > 1:
            raise ValueError(f"table columns differ in length: {dict(zip(header, map(len, columns)))}")
        rows: Iterator[list[Any]] = (list(r) for r in zip(*(c.tolist() for c in columns)))
    else:
        header = list(dict.fromkeys(k for row in table for k in row))
        rows = ([row.get(k) for k in header] for row in table)
    with atomic_open(path) as fh:
        text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
        writer = csv.writer(text)
        if header:
            writer.writerow(header)
        for row in rows:
            writer.writerow([_csv_cell(v) for v in row])
        text.flush()
        text.detach()  # leave closing/fsync of the underlying file to atomic_open


def _csv_cell(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""  # an empty cell means "missing" in Excel, pandas and R
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        text = f"{value:.4f}".rstrip("0").rstrip(".")
        # Keep tiny values visible instead of printing them as 0.
        return text if text not in ("0", "-0") else f"{value:.4g}"
    return value


def instance_polygons(
    labels: np.ndarray, offset: tuple[float, float] = (0, 0), simplify: float = 0.0
) -> dict[int, list[list[float]]]:
    """Outer-boundary polygon ring of every instance, counter-clockwise and closed, in (x, y).

    Coordinates follow the QuPath/GeoJSON pixel convention: pixel (row r, column c) covers
    the square [c, c + 1] x [r, r + 1], so an object filling columns 10..19 spans x = 10..20.
    ``offset`` (x, y) is added, e.g. the tile position within a slide.
    """
    labels = _check_labels(labels)
    ox, oy = float(offset[0]), float(offset[1])
    rings: dict[int, list[list[float]]] = {}
    for index, slices in enumerate(ndimage.find_objects(labels)):
        if slices is None:
            continue
        instance = index + 1
        # Pad so contours of objects touching the crop border are closed.
        crop = np.pad(labels[slices] == instance, 1).astype(np.uint8)
        contours = find_contours(crop, 0.5)
        if not contours:
            log.debug("instance %d: no contour found, skipped", instance)
            continue
        contour = max(contours, key=len)
        if len(contours) > 1:
            log.debug("instance %d: %d contours (holes or parts), keeping the outer/longest", instance, len(contours))
        # Dropping collinear vertices is lossless and vectorised; Douglas-Peucker (`simplify`
        # > 0) shrinks files further but costs ~2 ms per nucleus in scikit-image.
        contour = _drop_collinear(contour)
        ring = approximate_polygon(contour, tolerance=simplify) if simplify > 0 else contour
        if len(ring) < 4:
            ring = contour  # tiny objects: keep the unsimplified outline rather than lose them
        if len(ring) < 4:
            log.debug("instance %d: degenerate polygon (%d points), skipped", instance, len(ring))
            continue
        # Crop (row, col) -> image (x, y): -1 for the padding, +0.5 from pixel-centre to pixel-edge grid.
        xs = ring[:, 1] + (slices[1].start - 0.5 + ox)
        ys = ring[:, 0] + (slices[0].start - 0.5 + oy)
        if _signed_area(xs, ys) < 0:  # RFC 7946: exterior rings are counter-clockwise
            xs, ys = xs[::-1], ys[::-1]
        points = [[round(float(x), 3), round(float(y), 3)] for x, y in zip(xs, ys)]
        if points[0] != points[-1]:
            points.append(list(points[0]))
        rings[instance] = points
    return rings


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    """Keep only the vertices of a closed ring where the direction changes (plus the closure)."""
    if len(ring) < 4:
        return ring
    d = np.diff(ring, axis=0)  # segment i runs from vertex i to i+1; ring[-1] == ring[0]
    prev = np.roll(d, 1, axis=0)
    cross = prev[:, 0] * d[:, 1] - prev[:, 1] * d[:, 0]
    same_dir = np.isclose(cross, 0.0) & ((prev * d).sum(1) > 0)
    keep = ~same_dir
    pts = ring[:-1][keep]
    if len(pts) < 3:
        return ring
    return np.vstack([pts, pts[:1]])


def _signed_area(xs: np.ndarray, ys: np.ndarray) -> float:
    return 0.5 * float(np.dot(xs[:-1], ys[1:]) - np.dot(xs[1:], ys[:-1]))


def write_geojson(
    path: str | Path,
    labels: np.ndarray,
    properties: Mapping[int, Mapping] | Mapping[str, np.ndarray] | None = None,
    offset: tuple[float, float] = (0, 0),
    object_type: str = "detection",
    classification: str = "Nucleus",
    color: tuple[int, int, int] = (0, 200, 0),
    classes: Mapping[int, tuple[str, Sequence[int]]] | None = None,
    class_key: str = "size_class",
) -> int:
    """Write instances as a GeoJSON FeatureCollection that QuPath imports as objects; return the count.

    ``properties`` maps instance id -> {name: value}; a column table with an ``id`` column
    (as from ``measure_instances``) is accepted too. Finite numeric values become QuPath
    measurements (NaN is left out). Feature ids are UUIDs derived from the offset and the
    instance id, so re-running gives the same ids and tiles of one slide do not collide.
    With ``classes`` (code -> (name, colour)), an object whose ``class_key`` property is one
    of the codes gets that classification (others keep ``classification``), and ``class_key``
    is not written as a measurement.
    """
    path = Path(path)
    by_id = _properties_by_id(properties)
    default = {"name": classification, "color": [int(c) for c in color]}
    by_code = {int(k): {"name": str(n), "color": [int(c) for c in rgb]} for k, (n, rgb) in (classes or {}).items()}
    features = []
    for instance, ring in instance_polygons(labels, offset=offset).items():
        props = by_id.get(instance, {})
        measurements = {
            str(k): _py_number(v) for k, v in props.items()
            if _is_finite_number(v) and not (classes is not None and k == class_key)
        }
        code = props.get(class_key) if classes is not None else None
        cls = by_code.get(int(code), default) if _is_finite_number(code) else default
        features.append({
            "type": "Feature",
            "id": str(uuid.uuid5(_UUID_NAMESPACE, f"{offset[0]:g},{offset[1]:g}/{instance}")),
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {
                "objectType": object_type,
                "classification": cls,
                "measurements": measurements,
                "instance_id": instance,
            },
        })
    collection = {"type": "FeatureCollection", "features": features}
    with atomic_open(path) as fh:
        # allow_nan=False: NaN is not valid JSON and QuPath's parser would reject the file.
        fh.write(json.dumps(collection, allow_nan=False, separators=(",", ":")).encode("utf-8"))
    return len(features)


def _properties_by_id(properties: Mapping | None) -> dict[int, Mapping]:
    if not properties:
        return {}
    if "id" in properties and not isinstance(next(iter(properties)), (int, np.integer)):
        ids = np.asarray(properties["id"]).ravel()
        cols = {k: np.asarray(v).ravel() for k, v in properties.items() if k != "id"}  # the id is the key
        return {int(i): {k: c[n] for k, c in cols.items()} for n, i in enumerate(ids)}
    return {int(k): v for k, v in properties.items()}


def _is_finite_number(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    return math.isfinite(float(value))


def _py_number(value: Any) -> int | float:
    return value.item() if isinstance(value, np.generic) else value


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as pretty UTF-8 JSON, converting numpy types, paths and NaN (-> null)."""
    text = json.dumps(_jsonable(obj), indent=2, ensure_ascii=False, allow_nan=False)
    with atomic_open(path) as fh:
        fh.write((text + "\n").encode("utf-8"))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return [_jsonable(v) for v in sorted(obj, key=str)]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    return str(obj)


def ensure_output_dir(path: str | Path, overwrite: bool = False) -> Path:
    """Create an output folder and check it is writable; refuse a non-empty one unless ``overwrite``."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create output folder ({exc.strerror or exc})") from exc
    # os.access is unreliable (root, ACLs, network shares): actually list and write.
    probe = path / f".pathseg-write-test-{uuid.uuid4().hex[:8]}"
    try:
        if not overwrite and any(not p.name.startswith(".") for p in path.iterdir()):
            raise OutputError(f"{path}: output folder is not empty; choose a new folder or pass --overwrite")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"{path}: output folder is not writable ({exc.strerror or exc})") from exc
    return path


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {labels.shape}")
    if labels.dtype == bool:
        return labels.astype(np.int32)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"label map must have an integer dtype, got {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError("label map has negative ids")
    return labels
