"""Ground-truth mask rules: which pixels of the rendered layers make up the task mask g_m."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from pathseg.synth.spec import MaskRule

__all__ = ["LayerState", "ObjectRecord", "apply_rules", "covered_above", "mask_from_rules", "object_slices"]

# A layer hides what lies below where its alpha reaches this value (same threshold as instances).
COVER_ALPHA = 0.5


@dataclass
class ObjectRecord:
    """One placed object: global id, its full mask patch and where the patch sits on the canvas."""
    id: int
    top: int
    left: int
    mask: np.ndarray            # bool patch (h, w); may reach past the canvas border
    parent: int = 0
    cohort: int = -1
    _centroid: tuple[float, float] | None = field(default=None, repr=False)

    def centroid(self) -> tuple[float, float]:
        """(y, x) centroid of the full object in canvas coordinates (may lie off the canvas)."""
        if self._centroid is None:
            ys, xs = np.nonzero(self.mask)
            n = len(ys)  # sum / n: ndarray.mean's overhead is ~3x the work on these small patches
            self._centroid = (self.top + int(ys.sum()) / n, self.left + int(xs.sum()) / n)
        return self._centroid


@dataclass
class LayerState:
    """What a rendered layer leaves for compositing, instances and rules."""
    name: str
    category: str
    alpha: np.ndarray                     # float32 (H, W) in [0, 1]
    coverage: np.ndarray                  # bool (H, W): pixels the layer paints
    labels: np.ndarray | None = None      # int32 (H, W) global object ids (object layers only)
    objects: list[ObjectRecord] = field(default_factory=list)


def object_slices(shape: tuple[int, int], rec: ObjectRecord) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """(canvas slices, patch slices) of an object after clipping at the canvas border."""
    h, w = rec.mask.shape
    y0, x0 = max(rec.top, 0), max(rec.left, 0)
    y1, x1 = min(rec.top + h, shape[0]), min(rec.left + w, shape[1])
    if y1 <= y0 or x1 <= x0:
        return (slice(0, 0), slice(0, 0)), (slice(0, 0), slice(0, 0))
    return (slice(y0, y1), slice(x0, x1)), (slice(y0 - rec.top, y1 - rec.top), slice(x0 - rec.left, x1 - rec.left))


def covered_above(layers: Sequence[LayerState], index: int) -> np.ndarray:
    """Bool (H, W): pixels hidden by any layer above `index` (alpha >= COVER_ALPHA)."""
    out = np.zeros(layers[index].alpha.shape, bool)
    for state in layers[index + 1:]:
        out |= state.alpha >= COVER_ALPHA
    return out


@lru_cache(maxsize=16)
def _disc(radius: float) -> np.ndarray:
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disc = (yy**2 + xx**2 <= radius**2).astype(np.float32)
    disc.setflags(write=False)
    return disc


def concentration(coverage: np.ndarray, centre: tuple[float, float], radius: float) -> float:
    """Fraction of the disc (radius px, clipped to the canvas) around `centre` that `coverage` covers."""
    disc = _disc(radius)
    r = disc.shape[0] // 2
    cy, cx = round(centre[0]), round(centre[1])
    # Only the disc's part inside the canvas counts, so objects near the border are not penalised.
    rec = ObjectRecord(0, cy - r, cx - r, disc.astype(bool))
    canvas, patch = object_slices(coverage.shape, rec)
    d = disc[patch]
    total = float(d.sum())
    return float((coverage[canvas] * d).sum()) / total if total else 0.0


def apply_rules(rules: Sequence[MaskRule], layers: Sequence[LayerState],
                shape: tuple[int, int]) -> tuple[np.ndarray, set[int]]:
    """(bool mask = union of the rules, ids of the objects the rules selected)."""
    index = {state.name: i for i, state in enumerate(layers)}
    mask = np.zeros(shape, bool)
    selected: set[int] = set()
    for rule in rules:
        i = index[rule.layer]
        state = layers[i]
        if state.labels is None:
            continue
        if rule.rule == "objects":
            mask |= state.labels > 0
            selected.update(rec.id for rec in state.objects)
        elif rule.rule == "visible":
            visible = (state.labels > 0) & ~covered_above(layers, i)
            mask |= visible
            selected.update(int(v) for v in np.unique(state.labels[visible]))
        elif rule.rule == "concentration":
            cover = layers[index[rule.of]].coverage.astype(np.float32)
            for rec in state.objects:
                if concentration(cover, rec.centroid(), rule.radius) > rule.threshold:
                    canvas, patch = object_slices(shape, rec)
                    mask[canvas] |= rec.mask[patch]
                    selected.add(rec.id)
        else:  # the parser only lets known rules through
            raise ValueError(f"unknown mask rule {rule.rule!r}")
    selected.discard(0)
    return mask, selected


def mask_from_rules(rules: Sequence[MaskRule], layers_state: Sequence[LayerState], shape: tuple[int, int]) -> np.ndarray:
    """Bool (H, W) task mask g_m: the union of all rules."""
    return apply_rules(rules, layers_state, shape)[0]
