"""Pixel-level metrics on binary masks (foreground = label > 0).

Every function accepts label maps or boolean masks of the same shape; any
value > 0 counts as foreground, so instance maps can be passed directly.

Empty-case convention (one rule for all ratios): a ratio whose denominator is
0 is 1.0 when *both* masks are empty (nothing to find, nothing found) and 0.0
otherwise.  In practice:

* both masks empty                -> every score is 1.0;
* prediction empty, truth not     -> precision 0.0 (and recall, dice, iou 0.0);
* truth empty, prediction not     -> recall 0.0 (and precision, dice, iou 0.0).

Accuracy only has a zero denominator for zero-size arrays, which are "both
empty" and score 1.0.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "PixelScores",
    "pixel_scores",
    "precision",
    "recall",
    "dice",
    "f1",
    "accuracy",
    "iou",
    "jaccard",
]


class PixelScores(NamedTuple):
    """Confusion counts and the scores derived from them for one pair of masks."""

    tp: int
    fp: int
    fn: int
    tn: int
    precision: float  # TP / (TP + FP)
    recall: float  # TP / (TP + FN)
    dice: float  # 2 TP / (2 TP + FP + FN), identical to pixel F1
    accuracy: float  # (TP + TN) / (TP + FP + FN + TN)
    iou: float  # TP / (TP + FP + FN), the Jaccard index


def _foreground(x: ArrayLike) -> np.ndarray:
    return np.asarray(x) > 0


def _ratio(num: int, den: int, both_empty: bool) -> float:
    # A zero denominator only happens when a mask is empty; see module docstring.
    if den == 0:
        return 1.0 if both_empty else 0.0
    return float(num) / float(den)


def pixel_scores(true: ArrayLike, pred: ArrayLike) -> PixelScores:
    """Pixel confusion counts and precision, recall, Dice (= F1), accuracy and IoU.

    Foreground is ``label > 0`` in both maps.  Empty masks follow the module
    convention: both empty -> 1.0 for every score, otherwise 0/0 -> 0.0.
    """
    t = _foreground(true)
    p = _foreground(pred)
    if t.shape != p.shape:
        raise ValueError(f"shape mismatch: true {t.shape} vs pred {p.shape}")
    # count_nonzero on booleans is far faster than summing products.
    n_t = int(np.count_nonzero(t))
    n_p = int(np.count_nonzero(p))
    tp = int(np.count_nonzero(t & p))
    fp = n_p - tp
    fn = n_t - tp
    tn = t.size - tp - fp - fn
    both_empty = n_t == 0 and n_p == 0
    return PixelScores(
        tp=tp,
        fp=fp,
        fn=fn,
        tn=tn,
        precision=_ratio(tp, tp + fp, both_empty),
        recall=_ratio(tp, tp + fn, both_empty),
        dice=_ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        accuracy=_ratio(tp + tn, t.size, both_empty),
        iou=_ratio(tp, tp + fp + fn, both_empty),
    )


def precision(true: ArrayLike, pred: ArrayLike) -> float:
    """Pixel precision TP / (TP + FP); see :func:`pixel_scores` for empty cases."""
    return pixel_scores(true, pred).precision


def recall(true: ArrayLike, pred: ArrayLike) -> float:
    """Pixel recall (sensitivity) TP / (TP + FN); see :func:`pixel_scores`."""
    return pixel_scores(true, pred).recall


def dice(true: ArrayLike, pred: ArrayLike) -> float:
    """Pixel Dice = F1 = 2 TP / (2 TP + FP + FN); see :func:`pixel_scores`."""
    return pixel_scores(true, pred).dice


def accuracy(true: ArrayLike, pred: ArrayLike) -> float:
    """Pixel accuracy (TP + TN) / all pixels; see :func:`pixel_scores`."""
    return pixel_scores(true, pred).accuracy


def iou(true: ArrayLike, pred: ArrayLike) -> float:
    """Pixel IoU (Jaccard) TP / (TP + FP + FN); see :func:`pixel_scores`."""
    return pixel_scores(true, pred).iou


# Common aliases: pixel F1 is the Dice coefficient, Jaccard is IoU.
f1 = dice
jaccard = iou
