"""Per-pixel loss weights that teach a semantic model to keep touching TAMs apart (TAM paper, 2.5.1).

"Pixels lying between TAMs that were closer than 10 pixels were associated with a penalty of about
thrice as much ... We also reduce the penalty for all the pixels on the edge of the cells, to account
for imperfect annotations." Touching instances are first split by a background line (Ronneberger et
al. 2015), so that the semantic target itself has the objects apart.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import OrderedDict
from dataclasses import astuple, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

# Part of the cache key: bump it whenever separation_target or instance_weight_map changes, or
# the .npz files cached beside a dataset would keep serving maps of the old definition.
WEIGHT_MAP_VERSION = 1


@dataclass(frozen=True)
class WeightMapConfig:
    """Weights of the background between close instances and of the instance rims."""

    gap_px: float = 10.0  # background with d1 + d2 below this lies between two instances
    gap_weight: float = 3.0
    edge_weight: float = 0.5
    edge_px: float = 1.0  # foreground within this distance of true background is rim
    separation_px: int = 1  # width of the background line cut between touching instances


def separation_target(labels: np.ndarray, separation_px: int = 1) -> np.ndarray:
    """Binary target (uint8 {0, 1}): the foreground minus lines that keep touching instances apart.

    A pixel becomes background when its (2s+1)^2 window holds a pixel of a *higher* id: only one side
    of each contact loses pixels, so the line is `separation_px` wide and no pixel of one instance is
    left 8-adjacent (for s = 1) to another instance.
    """
    labels = np.asarray(labels)
    fg = labels > 0
    if separation_px <= 0:
        return fg.astype(np.uint8)
    hi = ndi.maximum_filter(labels, size=2 * int(separation_px) + 1, mode="constant", cval=0)
    return (fg & (hi <= labels)).astype(np.uint8)


def _two_nearest_gap(sep_labels: np.ndarray, gap_px: float) -> np.ndarray:
    """Background pixels whose distances to the nearest and second-nearest instance sum below gap_px."""
    bg = sep_labels == 0
    out = np.zeros(sep_labels.shape, bool)
    if bg.all() or not bg.any():
        return out
    d1, ind = ndi.distance_transform_edt(bg, return_indices=True)
    nearest = sep_labels[ind[0], ind[1]]
    # d2 >= d1, so only pixels with d1 < gap/2 qualify, and their second instance is < gap away:
    # a window of 1.5 gap around each instance holds everything that matters, which keeps this
    # O(sum of window areas) instead of one full-image EDT per instance.
    r = int(math.ceil(1.5 * gap_px)) + 1
    h, w = sep_labels.shape
    for k, sl in enumerate(ndi.find_objects(sep_labels), start=1):
        if sl is None:
            continue
        win = (slice(max(0, sl[0].start - r), min(h, sl[0].stop + r)), slice(max(0, sl[1].start - r), min(w, sl[1].stop + r)))
        lab_w = sep_labels[win]
        other = (lab_w > 0) & (lab_w != k)
        if not other.any():
            continue
        sel = bg[win] & (nearest[win] == k) & (d1[win] < gap_px / 2)
        if not sel.any():
            continue
        d2 = ndi.distance_transform_edt(~other)
        out[win] |= sel & (d1[win] + d2 < gap_px)
    return out


def instance_weight_map(labels: np.ndarray, cfg: WeightMapConfig | None = None) -> np.ndarray:
    """Per-pixel loss weights (float32, (H, W)): 1, gap_weight between close instances, edge_weight on rims."""
    cfg = cfg or WeightMapConfig()
    labels = np.asarray(labels)
    target = separation_target(labels, cfg.separation_px).astype(bool)
    weight = np.ones(labels.shape, np.float32)
    if not target.any():
        return weight
    sep_labels = np.where(target, labels, 0).astype(np.int64)
    weight[_two_nearest_gap(sep_labels, cfg.gap_px)] = cfg.gap_weight
    true_bg = labels == 0
    if true_bg.any() and cfg.edge_px > 0:
        # Distance to the annotated background only: pixels beside a separation line are the
        # contact between two cells, which the model must learn, not an uncertain outline.
        rim = target & (ndi.distance_transform_edt(~true_bg) <= cfg.edge_px)
        weight[rim] = cfg.edge_weight
    return weight


class WeightMapCache:
    """(target, weight) per label map, computed once and kept in memory and, with a folder, as .npz files.

    Arrays handed out are read-only: they are shared between calls. `computed` counts real computations.
    """

    def __init__(self, folder: Path | None = None, max_items: int | None = None) -> None:
        self.folder = Path(folder) if folder is not None else None
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.max_items = max_items
        self.computed = 0
        self._memory: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    @staticmethod
    def key(labels: np.ndarray, cfg: WeightMapConfig) -> str:
        """sha1 of the label bytes, shape, dtype, config and WEIGHT_MAP_VERSION."""
        labels = np.ascontiguousarray(labels)
        h = hashlib.sha1(labels.tobytes())
        h.update(repr((labels.shape, labels.dtype.str, astuple(cfg), WEIGHT_MAP_VERSION)).encode())
        return h.hexdigest()

    def get(self, labels: np.ndarray, cfg: WeightMapConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(separation target uint8, weight float32) of `labels`."""
        cfg = cfg or WeightMapConfig()
        key = self.key(labels, cfg)
        hit = self._memory.get(key)
        if hit is not None:
            self._memory.move_to_end(key)
            return hit
        path = self.folder / f"{key}.npz" if self.folder is not None else None
        if path is not None and path.exists():
            with np.load(path) as z:
                pair = (z["target"], z["weight"])
        else:
            pair = (separation_target(labels, cfg.separation_px), instance_weight_map(labels, cfg))
            self.computed += 1
            if path is not None:
                # Write then rename: data-loader workers may race on the same key.
                tmp = path.with_name(f"{key}.{os.getpid()}.tmp.npz")
                np.savez_compressed(tmp, target=pair[0], weight=pair[1])
                os.replace(tmp, path)
        for a in pair:
            a.setflags(write=False)
        self._memory[key] = pair
        if self.max_items is not None and len(self._memory) > self.max_items:
            self._memory.popitem(last=False)
        return pair
