"""Instances of a slide, block by block, with every object cut by a tile border reported exactly once.

Blocks are the tiles of the inference grid. A block extracts instances from the stored
probabilities of its core plus ``margin`` px on every side, and keeps (owns) the objects
whose centroid lies in its core. An object smaller than the margin is then seen whole by
its owner, and computed from the same stored probabilities by every block that sees it,
so an object cut by a tile border becomes one object, never two halves or a duplicate.
Objects larger than the margin are kept truncated by their owner and counted (``n_cut``).

Global ids follow the raster order of blocks. A block's objects are pasted into the label
array where the array is still background (or already holds this block's own ids, after a
restart), so re-running a block after a crash reproduces exactly the same labels.
"""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from pathseg.errors import OutputError
from pathseg.instances import PostProcess, instances_from_probs
from pathseg.io.write import atomic_open, instance_polygons
from pathseg.measure import measure_instances
from pathseg.wsi.engine import dequantise

ReadFn = Callable[[int, int, int, int], np.ndarray]


@dataclass(frozen=True)
class Frame:
    """Geometry of the working frame of one slide."""

    height: int  # working px
    width: int
    tile: int  # tile core, working px
    scale: float  # level-0 px per working px
    mpp: float | None  # µm per working px (None when unknown)

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of tiles."""
        return math.ceil(self.height / self.tile), math.ceil(self.width / self.tile)

    def to_level0(self, xy: np.ndarray) -> np.ndarray:
        """Pixel-edge coordinates (x, y) of the working frame in level-0 px."""
        return xy * self.scale


def process_block(
    r: int,
    c: int,
    frame: Frame,
    probs: Any,  # zarr (C-1, H, W) uint8
    labels: Any,  # zarr (H, W) int32
    read: ReadFn,
    pp: PostProcess,
    margin: int,
    id_start: int,
    keep: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Extract, own, measure and outline the objects of block (r, c); paste them into ``labels``.

    ``keep(x, y)`` (level-0 centroids) can reject objects, e.g. outside a region of interest.
    Returns the block's part: table columns (centroids in level-0 px), ring vertices and counts.
    """
    t, h, w = frame.tile, frame.height, frame.width
    cy0, cx0 = r * t, c * t
    cy1, cx1 = min(cy0 + t, h), min(cx0 + t, w)
    wy0, wx0 = max(0, cy0 - margin), max(0, cx0 - margin)
    wy1, wx1 = min(h, cy1 + margin), min(w, cx1 + margin)
    stored = np.asarray(probs[:, wy0:wy1, wx0:wx1])
    if not stored[: stored.shape[0] - pp.embed_dim].any():  # no class probability: nothing here
        return empty_part()
    local = instances_from_probs(dequantise(stored, pp.embed_dim), pp)
    n = int(local.max(initial=0))
    if n == 0:
        return empty_part()
    counts = np.bincount(local.ravel(), minlength=n + 1).astype(np.float64)
    rows, cols = np.nonzero(local)
    owner = local[rows, cols]
    with np.errstate(invalid="ignore"):
        my = np.bincount(owner, weights=rows, minlength=n + 1) / counts + wy0
        mx = np.bincount(owner, weights=cols, minlength=n + 1) / counts + wx0
    ids = np.arange(1, n + 1)
    cy, cx = np.floor(my[1:]).astype(np.int64), np.floor(mx[1:]).astype(np.int64)
    owned = (cy >= cy0) & (cy < cy1) & (cx >= cx0) & (cx < cx1)
    if keep is not None and owned.any():
        sel = np.flatnonzero(owned)
        # Region tests take pixel-edge coordinates (pixel c spans [c, c + 1]): centres at c + 0.5.
        owned[sel] = keep((mx[1:][sel] + 0.5) * frame.scale, (my[1:][sel] + 0.5) * frame.scale)
    # An owned object reaching the window edge (not the slide edge) is larger than the margin.
    boxes = ndi.find_objects(local)
    wh, ww = local.shape
    cut = np.array([
        bool(s is not None and ((s[0].start == 0 and wy0 > 0) or (s[0].stop == wh and wy1 < h)
                                or (s[1].start == 0 and wx0 > 0) or (s[1].stop == ww and wx1 < w)))
        for s in boxes
    ])
    kept = ids[owned]
    k = len(kept)
    if k == 0:
        return empty_part()
    lut = np.zeros(n + 1, np.int32)
    lut[kept] = np.arange(1, k + 1, dtype=np.int32)
    mine = lut[local]
    # Work on the bounding box of the owned objects only.
    ys, xs = np.nonzero(mine)
    by0, by1, bx0, bx1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = mine[by0:by1, bx0:bx1]
    gy0, gx0 = wy0 + by0, wx0 + bx0
    rgb = read(gx0, gy0, bx1 - bx0, by1 - by0)
    table = measure_instances(crop, rgb, frame.mpp)
    rings = instance_polygons(crop, offset=(gx0, gy0))
    _paste(labels, crop, gy0, gx0, id_start, k)

    part = {name: np.asarray(v) for name, v in table.items()}
    part["id"] = part["id"].astype(np.int64) + id_start
    part["centroid_x"], part["centroid_y"] = _centroid_level0(frame, part["centroid_x"] + gx0, part["centroid_y"] + gy0)
    counts_v, verts = [], []
    for local_id in range(1, k + 1):
        ring = np.asarray(rings.get(local_id, []), np.float64).reshape(-1, 2)
        counts_v.append(len(ring))
        verts.append(frame.to_level0(ring))
    part["ring_counts"] = np.asarray(counts_v, np.int64)
    part["ring_xy"] = np.concatenate(verts) if verts else np.zeros((0, 2))
    part["n_cut"] = np.asarray(int(cut[owned].sum()))
    return part


def _centroid_level0(frame: Frame, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Pixel centres map to pixel centres: working px x covers level-0 [x*s, (x+1)*s).
    s = frame.scale
    return (x + 0.5) * s - 0.5, (y + 0.5) * s - 0.5


def _paste(labels: Any, crop: np.ndarray, y0: int, x0: int, id_start: int, k: int) -> None:
    """Write a block's objects (local ids 1..k) where the label array is free or already this block's."""
    region = (slice(y0, y0 + crop.shape[0]), slice(x0, x0 + crop.shape[1]))
    current = np.asarray(labels[region])
    free = (current == 0) | ((current > id_start) & (current <= id_start + k))
    write = (crop > 0) & free
    if not write.any():
        return
    current[write] = crop[write] + id_start
    labels[region] = current


def empty_part() -> dict[str, np.ndarray]:
    """A part with no objects."""
    part = {name: np.zeros(0, np.int64 if name in ("id", "area_px") else np.float64)
            for name in measure_instances(np.zeros((1, 1), np.int32))}
    part["ring_counts"] = np.zeros(0, np.int64)
    part["ring_xy"] = np.zeros((0, 2))
    part["n_cut"] = np.asarray(0)
    return part


class PartStore:
    """Finished blocks' parts: in memory, or as one .npz file per block (written atomically) for resume."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._memory: dict[int, dict[str, np.ndarray]] = {}
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def _path(self, index: int) -> Path:
        assert self.folder is not None
        return self.folder / f"block{index:07d}.npz"

    def has(self, index: int) -> bool:
        """Whether block ``index`` is finished."""
        return index in self._memory if self.folder is None else self._path(index).exists()

    def save(self, index: int, part: dict[str, np.ndarray]) -> None:
        """Store a finished block."""
        if self.folder is None:
            self._memory[index] = part
            return
        buffer = io.BytesIO()
        np.savez(buffer, **part)
        with atomic_open(self._path(index)) as fh:
            fh.write(buffer.getvalue())

    def load(self, index: int) -> dict[str, np.ndarray]:
        """A finished block's part."""
        if self.folder is None:
            return self._memory[index]
        try:
            with np.load(self._path(index)) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise OutputError(f"{self._path(index)}: damaged work file ({exc}); pass --overwrite") from None

    def count(self, index: int) -> int:
        """Number of objects of a finished block."""
        return len(self.load(index)["id"])
