"""Segmentation metrics: pixel scores, instance scores (AJI, AJI+, PQ, SBD) and aggregation.

Every per-image metric is a function ``(true, pred) -> float`` registered in
:data:`METRICS`; :func:`evaluate_pair` computes several at once, sharing work,
and :func:`summarise` / :func:`format_table` aggregate and report them.
"""

from __future__ import annotations

from .aggregate import METRIC_NAMES, METRICS, evaluate_pair, format_table, summarise
from .objects import (
    Contingency,
    PanopticScores,
    aji,
    aji_plus,
    best_dice,
    contingency,
    dq,
    f1_detection,
    panoptic_quality,
    pq,
    sbd,
    sq,
    symmetric_best_dice,
)
from .pixel import PixelScores, accuracy, dice, f1, iou, jaccard, pixel_scores, precision, recall

__all__ = [
    "METRICS",
    "METRIC_NAMES",
    "evaluate_pair",
    "summarise",
    "format_table",
    "PixelScores",
    "pixel_scores",
    "precision",
    "recall",
    "dice",
    "f1",
    "accuracy",
    "iou",
    "jaccard",
    "Contingency",
    "contingency",
    "aji",
    "aji_plus",
    "PanopticScores",
    "panoptic_quality",
    "pq",
    "dq",
    "sq",
    "f1_detection",
    "best_dice",
    "symmetric_best_dice",
    "sbd",
]
