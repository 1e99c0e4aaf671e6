"""Instance-level metrics on integer instance maps (0 = background, other ids = objects).

Ids need not be consecutive and their values carry no meaning.  Every metric is
computed from one contingency table of the two maps (:func:`contingency`):
object areas plus the intersection of every overlapping (true, pred) pair,
built with a single ``np.bincount`` pass, so cost is linear in pixels and
(almost) linear in objects.

Empty-case convention, shared by AJI, AJI+, PQ/DQ/SQ, detection F1 and SBD:
both maps without objects -> 1.0; exactly one of them without objects -> 0.0.

Ties (a ground-truth object with equal IoU to several predictions) are broken
toward the lowest prediction id, as ``np.argmax`` does in the reference code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = [
    "Contingency", "contingency", "aji", "aji_plus", "PanopticScores", "panoptic_quality",
    "pq", "dq", "sq", "f1_detection", "best_dice", "symmetric_best_dice", "sbd",
]

# A dense (n_true + 1) x (n_pred + 1) bincount is used while it has at most this
# many cells (32 MiB of int64); beyond that, np.unique on the pair codes.
_DENSE_TABLE_MAX = 1 << 22


@dataclass(frozen=True)
class Contingency:
    """Object areas and the overlap of every intersecting (true, pred) object pair.

    Objects are indexed 0..n-1 in increasing id order (``true_ids``/``pred_ids``);
    ``rows``/``cols``/``inter``/``union``/``iou`` list the k pairs with a non-empty
    intersection, sorted by (row, col).
    """

    true_ids: np.ndarray
    pred_ids: np.ndarray
    true_area: np.ndarray
    pred_area: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    inter: np.ndarray
    union: np.ndarray
    iou: np.ndarray

    @property
    def n_true(self) -> int:
        return len(self.true_ids)

    @property
    def n_pred(self) -> int:
        return len(self.pred_ids)


def _as_labels(x: ArrayLike, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == bool:
        return a.astype(np.intp)
    if not np.issubdtype(a.dtype, np.integer):
        # Float maps (e.g. read from float TIFFs) are fine if they hold whole numbers.
        if not np.issubdtype(a.dtype, np.floating) or not np.all(np.isfinite(a) & (a == np.round(a))):
            raise ValueError(f"{name} must be an integer label map, got dtype {a.dtype}")
        a = a.astype(np.int64)
    if a.size and a.min() < 0:
        raise ValueError(f"{name} has negative labels; use 0 for background and ids > 0 for objects")
    return a


def _relabel(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (object ids sorted, flat index map with 0 = background and 1..n = objects)."""
    flat = a.ravel()
    if flat.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.intp)
    hi = int(flat.max())
    if hi <= 4 * flat.size + 65535:
        # Look-up table through bincount: O(pixels), avoids np.unique's sort.
        flat = flat.astype(np.intp, copy=False)  # bincount refuses uint64
        present = np.bincount(flat, minlength=1) > 0
        present[0] = False
        lut = np.cumsum(present, dtype=np.intp)  # id -> 1..n for present ids, 0 for background
        return np.flatnonzero(present).astype(np.int64), lut[flat]
    ids, inv = np.unique(flat, return_inverse=True)
    inv = inv.ravel().astype(np.intp)
    if ids[0] != 0:  # no background pixel: shift so that index 0 stays "background"
        return ids.astype(np.int64), inv + 1
    return ids[1:].astype(np.int64), inv


def contingency(true: ArrayLike, pred: ArrayLike) -> Contingency:
    """Contingency (intersection) table of two instance maps, in one vectorised pass."""
    t = _as_labels(true, "true")
    p = _as_labels(pred, "pred")
    if t.shape != p.shape:
        raise ValueError(f"shape mismatch: true {t.shape} vs pred {p.shape}")
    t_ids, t_idx = _relabel(t)
    p_ids, p_idx = _relabel(p)
    nt1, np1 = len(t_ids) + 1, len(p_ids) + 1
    codes = t_idx.astype(np.int64) * np1 + p_idx
    if nt1 * np1 <= _DENSE_TABLE_MAX:
        table = np.bincount(codes, minlength=nt1 * np1).reshape(nt1, np1)
        true_area = table[1:].sum(axis=1)
        pred_area = table[:, 1:].sum(axis=0)
        rows, cols = np.nonzero(table[1:, 1:])
        inter = table[1:, 1:][rows, cols]
    else:
        # Many objects: a dense table would not fit, so count only the pairs present.
        pair, inter = np.unique(codes, return_counts=True)
        r, c = np.divmod(pair, np1)
        keep = (r > 0) & (c > 0)
        rows, cols, inter = r[keep] - 1, c[keep] - 1, inter[keep]
        true_area = np.bincount(t_idx, minlength=nt1)[1:]
        pred_area = np.bincount(p_idx, minlength=np1)[1:]
    rows = rows.astype(np.intp)
    cols = cols.astype(np.intp)
    inter = inter.astype(np.int64)
    union = true_area[rows] + pred_area[cols] - inter
    return Contingency(
        t_ids, p_ids, true_area.astype(np.int64), pred_area.astype(np.int64),
        rows, cols, inter, union.astype(np.int64), inter / union,
    )


def _first_per_group(group: np.ndarray, score: np.ndarray, tiebreak: np.ndarray) -> np.ndarray:
    """Indices of the max-score element of each group (ties -> lowest tiebreak)."""
    if group.size == 0:
        return np.zeros(0, np.intp)
    order = np.lexsort((tiebreak, -score, group))
    g = group[order]
    first = np.ones(g.size, bool)
    first[1:] = g[1:] != g[:-1]
    return order[first]


def _one_to_one(c: Contingency) -> np.ndarray:
    """Pair indices of a one-to-one matching maximising total IoU (IoU > 0 pairs only).

    The optimum decomposes over connected components of the overlap graph, so
    linear_sum_assignment runs only on components with >= 2 objects on both
    sides; the usual star-shaped components reduce to a vectorised argmax.
    """
    k = c.rows.size
    if k == 0:
        return np.zeros(0, np.intp)
    graph = coo_matrix((np.ones(k), (c.rows, c.n_true + c.cols)), shape=(c.n_true + c.n_pred,) * 2)
    _, comp_of_node = connected_components(graph, directed=False)
    comp = comp_of_node[c.rows]
    n_comp = int(comp_of_node.max()) + 1
    n_r = np.bincount(comp_of_node[: c.n_true], minlength=n_comp)
    n_c = np.bincount(comp_of_node[c.n_true :], minlength=n_comp)
    star = (n_r[comp] == 1) | (n_c[comp] == 1)
    star_idx = np.flatnonzero(star)
    chosen = [star_idx[_first_per_group(comp[star], c.iou[star], c.cols[star])]]
    hard = np.flatnonzero(~star)
    if hard.size:
        hard = hard[np.argsort(comp[hard], kind="stable")]
        bounds = np.flatnonzero(np.diff(comp[hard])) + 1
        for idx in np.split(hard, bounds):  # loop over rare many-to-many clusters only
            ur, ri = np.unique(c.rows[idx], return_inverse=True)
            uc, ci = np.unique(c.cols[idx], return_inverse=True)
            weight = np.zeros((ur.size, uc.size))
            weight[ri, ci] = c.iou[idx]
            where = np.full((ur.size, uc.size), -1, np.intp)
            where[ri, ci] = idx
            a, b = linear_sum_assignment(weight, maximize=True)
            chosen.append(where[a, b][weight[a, b] > 0])
    return np.sort(np.concatenate(chosen))


def _aji_from(c: Contingency, sel: np.ndarray) -> float:
    if c.n_true == 0 and c.n_pred == 0:
        return 1.0
    inter = int(c.inter[sel].sum())
    union = int(c.union[sel].sum())
    paired_t = np.zeros(c.n_true, bool)
    paired_t[c.rows[sel]] = True
    paired_p = np.zeros(c.n_pred, bool)
    paired_p[c.cols[sel]] = True
    union += int(c.true_area[~paired_t].sum()) + int(c.pred_area[~paired_p].sum())
    return inter / union


def _aji(c: Contingency) -> float:
    return _aji_from(c, _first_per_group(c.rows, c.iou, c.cols))


def _aji_plus(c: Contingency) -> float:
    return _aji_from(c, _one_to_one(c))


def aji(true: ArrayLike, pred: ArrayLike) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017, IEEE TMI).

    For each ground-truth object G_i, S_j is the prediction with the highest
    IoU among those overlapping G_i (ties -> lowest prediction id); C += |G_i ∩ S_j|
    and U += |G_i ∪ S_j|.  A G_i overlapping no prediction adds |G_i| to U.  A
    prediction may be picked by several G_i and is then counted in U once per
    pick (as in the original code); every prediction never picked adds its area
    to U.  AJI = C / U.  Both maps empty -> 1.0; one empty -> 0.0.
    """
    return _aji(contingency(true, pred))


def aji_plus(true: ArrayLike, pred: ArrayLike) -> float:
    """AJI+ (Graham et al. 2019, HoVer-Net): AJI with a one-to-one pairing.

    Pairs are the one-to-one matching maximising the total IoU
    (``linear_sum_assignment`` on the IoU matrix), keeping pairs with IoU > 0;
    C sums their intersections and U their unions, and every unmatched ground
    truth or prediction adds its area to U.  AJI+ = C / U.  Both maps empty ->
    1.0; one empty -> 0.0.
    """
    return _aji_plus(contingency(true, pred))


class PanopticScores(NamedTuple):
    """Matched/unmatched counts and the panoptic scores derived from them."""

    tp: int  # matched pairs
    fp: int  # unmatched predictions
    fn: int  # unmatched ground-truth objects
    dq: float  # TP / (TP + FP/2 + FN/2)
    sq: float  # mean IoU of matched pairs
    pq: float  # DQ * SQ
    f1: float  # detection F1 at this IoU threshold (equal to DQ)


def _panoptic(c: Contingency, iou_threshold: float = 0.5) -> PanopticScores:
    if not 0.0 <= iou_threshold < 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold}")
    if iou_threshold >= 0.5:
        # IoU > 0.5 pairs are unique: each object can exceed 1/2 with at most one other.
        sel = np.flatnonzero(c.iou > iou_threshold)
    else:
        sel = _one_to_one(c)
        sel = sel[c.iou[sel] > iou_threshold]
    tp = int(sel.size)
    fp, fn = c.n_pred - tp, c.n_true - tp
    if tp + fp + fn == 0:
        return PanopticScores(0, 0, 0, 1.0, 1.0, 1.0, 1.0)
    dq_ = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq_ = float(c.iou[sel].sum() / tp) if tp else 0.0
    return PanopticScores(tp, fp, fn, dq_, sq_, dq_ * sq_, dq_)


def panoptic_quality(true: ArrayLike, pred: ArrayLike, iou_threshold: float = 0.5) -> PanopticScores:
    """Panoptic quality and its parts (Kirillov et al. 2019), single class.

    A true and a predicted object match when IoU > iou_threshold (strictly; IoU
    exactly 0.5 does not match).  For thresholds >= 0.5 matches are unique by
    construction; below 0.5 they come from the max-total-IoU one-to-one
    matching.  DQ = TP / (TP + FP/2 + FN/2), SQ = mean IoU of matched pairs
    (0.0 when TP = 0), PQ = DQ * SQ, detection F1 = DQ.  Both maps empty -> all
    scores 1.0; one empty -> 0.0.
    """
    return _panoptic(contingency(true, pred), iou_threshold)


def pq(true: ArrayLike, pred: ArrayLike, iou_threshold: float = 0.5) -> float:
    """Panoptic quality DQ * SQ; see :func:`panoptic_quality`."""
    return panoptic_quality(true, pred, iou_threshold).pq


def dq(true: ArrayLike, pred: ArrayLike, iou_threshold: float = 0.5) -> float:
    """Detection quality TP / (TP + FP/2 + FN/2); see :func:`panoptic_quality`."""
    return panoptic_quality(true, pred, iou_threshold).dq


def sq(true: ArrayLike, pred: ArrayLike, iou_threshold: float = 0.5) -> float:
    """Segmentation quality, mean IoU of matched pairs; see :func:`panoptic_quality`."""
    return panoptic_quality(true, pred, iou_threshold).sq


def f1_detection(true: ArrayLike, pred: ArrayLike, iou_threshold: float = 0.5) -> float:
    """Object detection F1 with matches at IoU > iou_threshold (equals DQ)."""
    return panoptic_quality(true, pred, iou_threshold).f1


def _best_dice(c: Contingency, transpose: bool = False) -> float:
    n_a, n_b = (c.n_pred, c.n_true) if transpose else (c.n_true, c.n_pred)
    if n_a == 0:
        return 1.0 if n_b == 0 else 0.0
    best = np.zeros(n_a)
    d = 2.0 * c.inter / (c.true_area[c.rows] + c.pred_area[c.cols])
    np.maximum.at(best, c.cols if transpose else c.rows, d)
    return float(best.mean())


def _sbd(c: Contingency) -> float:
    return min(_best_dice(c), _best_dice(c, transpose=True))


def best_dice(a: ArrayLike, b: ArrayLike) -> float:
    """Best Dice BD(a, b): mean over objects of ``a`` of their best Dice with any object of ``b``.

    BD(a, b) = (1/|a|) sum_i max_j 2|a_i ∩ b_j| / (|a_i| + |b_j|), 0 for an a_i
    overlapping nothing.  Not symmetric.  ``a`` empty -> 1.0 if ``b`` is empty
    too, else 0.0.
    """
    return _best_dice(contingency(a, b))


def symmetric_best_dice(true: ArrayLike, pred: ArrayLike) -> float:
    """Symmetric best Dice, SBD = min(BD(true, pred), BD(pred, true)) (Scharr et al. 2016, CVPPP).

    Both maps empty -> 1.0; one empty -> 0.0.
    """
    return _sbd(contingency(true, pred))


sbd = symmetric_best_dice
