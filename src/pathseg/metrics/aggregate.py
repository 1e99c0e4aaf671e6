"""Per-image evaluation of a (truth, prediction) pair and aggregation over images."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from . import objects, pixel
from .objects import _aji, _aji_plus, _panoptic, _sbd, contingency

__all__ = ["METRICS", "METRIC_NAMES", "evaluate_pair", "summarise", "format_table"]

# Canonical order: used by evaluate_pair, summarise and format_table alike.
METRIC_NAMES: tuple[str, ...] = (
    "dice", "iou", "precision", "recall", "accuracy",
    "aji", "aji_plus", "pq", "dq", "sq", "f1_detection", "sbd",
)

# Flat registry: metric name -> per-image function (true, pred) -> float.
METRICS: dict[str, Callable[[ArrayLike, ArrayLike], float]] = {
    "dice": pixel.dice,
    "iou": pixel.iou,
    "precision": pixel.precision,
    "recall": pixel.recall,
    "accuracy": pixel.accuracy,
    "aji": objects.aji,
    "aji_plus": objects.aji_plus,
    "pq": objects.pq,
    "dq": objects.dq,
    "sq": objects.sq,
    "f1_detection": objects.f1_detection,
    "sbd": objects.sbd,
}

_PIXEL = {"dice", "iou", "precision", "recall", "accuracy"}
_PANOPTIC = {"pq", "dq", "sq", "f1_detection"}
_RESERVED = ("groups", "mean_of_groups")


def evaluate_pair(
    true: ArrayLike, pred: ArrayLike, metrics: Sequence[str] | None = None
) -> dict[str, float]:
    """All (or the named) per-image metrics of one prediction, as {name: value}.

    Names are those of :data:`METRICS`; the result follows the order asked for
    (canonical order when ``metrics`` is None).  Pixel metrics treat label > 0 as
    foreground; object metrics share one contingency table; PQ-family metrics
    use IoU > 0.5.  See the individual functions for definitions and empty cases.
    """
    names = list(METRIC_NAMES if metrics is None else metrics)
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {', '.join(METRIC_NAMES)}")
    t = np.asarray(true)
    p = np.asarray(pred)
    if t.shape != p.shape:
        raise ValueError(f"shape mismatch: true {t.shape} vs pred {p.shape}")
    values: dict[str, float] = {}
    if _PIXEL.intersection(names):
        ps = pixel.pixel_scores(t, p)
        values.update(dice=ps.dice, iou=ps.iou, precision=ps.precision, recall=ps.recall, accuracy=ps.accuracy)
    if set(names) - _PIXEL:
        # One contingency table serves every object metric.
        c = contingency(t, p)
        if "aji" in names:
            values["aji"] = _aji(c)
        if "aji_plus" in names:
            values["aji_plus"] = _aji_plus(c)
        if _PANOPTIC.intersection(names):
            pan = _panoptic(c)
            values.update(pq=pan.pq, dq=pan.dq, sq=pan.sq, f1_detection=pan.f1)
        if "sbd" in names:
            values["sbd"] = _sbd(c)
    return {m: float(values[m]) for m in names}


def _ordered(names: Iterable[str]) -> list[str]:
    """Canonical metrics first, in METRIC_NAMES order, then any others alphabetically."""
    names = set(names)
    return [m for m in METRIC_NAMES if m in names] + sorted(names.difference(METRIC_NAMES))


def _stats(values: Iterable[float]) -> dict[str, float | int]:
    # NaN marks "not defined for this image" and is left out of mean, std and n.
    v = np.array([float(x) for x in values if not math.isnan(float(x))], dtype=float)
    if v.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=0)), "n": int(v.size)}


def summarise(
    rows: Sequence[Mapping[str, float]], groups: Sequence[str] | None = None
) -> dict[str, Any]:
    """Mean, population std (ddof=0) and count of every metric over images, optionally per group.

    Returns ``{metric: {"mean", "std", "n"}}`` over all rows (``n`` counts rows
    that have the metric and a non-NaN value).  With ``groups`` (one group name
    per row, e.g. the patient), two more keys: ``"groups"`` =
    ``{group: {metric: {"mean", "std", "n"}}}`` in first-seen group order, and
    ``"mean_of_groups"`` = ``{metric: {"mean", "std", "n"}}`` computed over the
    group means (so each group weighs the same whatever its number of images).
    """
    names = _ordered(k for row in rows for k in row)
    clash = [m for m in names if m in _RESERVED]
    if clash:
        raise ValueError(f"metric names {clash} are reserved for summary keys")
    summary: dict[str, Any] = {m: _stats(row[m] for row in rows if m in row) for m in names}
    if groups is None:
        return summary
    if len(groups) != len(rows):
        raise ValueError(f"{len(groups)} group names for {len(rows)} rows")
    members: dict[str, list[Mapping[str, float]]] = {}
    for g, row in zip(groups, rows):
        members.setdefault(g, []).append(row)
    per_group = {
        g: {m: _stats(r[m] for r in group_rows if m in r) for m in names}
        for g, group_rows in members.items()
    }
    summary["groups"] = per_group
    summary["mean_of_groups"] = {m: _stats(per_group[g][m]["mean"] for g in per_group) for m in names}
    return summary


def _cell(stats: Mapping[str, float] | None) -> str:
    if not stats or stats.get("n", 0) == 0:
        return "n/a"
    return f"{stats['mean']:.3f} ({stats['std']:.3f})"


def format_table(summary: dict[str, Any], extra: Mapping[str, str] | None = None) -> str:
    """Markdown table "metric | mean (std)" of a :func:`summarise` result, 3 decimals.

    Rows follow the canonical metric order (others alphabetically after).  When
    the summary has groups, a "mean of groups (std)" column is added.  ``extra``
    key/value pairs (e.g. model, dataset) are appended as rows after the metrics.
    """
    names = _ordered(k for k in summary if k not in _RESERVED)
    by_group = summary.get("mean_of_groups")
    header = ["metric", "mean (std)"] + (["mean of groups (std)"] if by_group is not None else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for m in names:
        cells = [m, _cell(summary[m])]
        if by_group is not None:
            cells.append(_cell(by_group.get(m)))
        lines.append("| " + " | ".join(cells) + " |")
    for key, value in (extra or {}).items():
        cells = [str(key), str(value)] + ([""] if by_group is not None else [])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
