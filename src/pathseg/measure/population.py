"""Object populations: small/large size classes, per-image or per-slide summary, area histogram."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DEFAULT_LARGE_THRESHOLD_UM2", "ObjectSpec", "UNKNOWN", "objects_with_threshold", "population_summary",
           "size_class", "write_area_histogram"]

log = logging.getLogger(__name__)

# Small/large TAM cut-off (µm² of CD163+ cell area). Source: Donadon et al., ESMO 2019 abstract 3266,
# Ann Oncol 30(suppl_5):v198-v252, doi:10.1093/annonc/mdz246 (the conference report of the cohort
# published as Donadon et al., J Exp Med 2020): "small and large TAMs, as defined by using the best
# cutoff value extrapolated from the ROC curve (area: 60.39 µm²; Se=0.79; Sp=0.44)".
# It is the only published small/large cut-off for this marker and organ, so it is the default;
# it came from a ROC on recurrence-free survival and may have been meant for a patient's mean TAM
# area rather than single cells (the external cohort of Costa et al., Int J Surg 2023, reports a
# mean TAM area of 217.7 ± 67.8 µm², so per cell most TAMs are "large" at 60.39). Studies that
# need another cut-off set it per run with `pathseg segment --large-threshold-um2`.
DEFAULT_LARGE_THRESHOLD_UM2: float = 60.39
UNKNOWN = -1  # size class of an object whose area in µm² is unknown (no pixel size)
_DEFAULT_NAMES = ("small", "large")
# QuPath class colours: size classes must be told apart at a glance; unknown keeps the plain colour.
_PLAIN_COLOUR = (0, 200, 0)
_SMALL_COLOUR = (0, 150, 255)
_LARGE_COLOUR = (230, 60, 0)
_QUANTILES = (5, 25, 50, 75, 95)


def size_class(area_um2: Any, threshold_um2: float) -> np.ndarray:
    """Size class of each area: 0 small (< threshold), 1 large (>= threshold), -1 unknown (NaN)."""
    _check_threshold(threshold_um2)
    area = np.asarray(area_um2, dtype=np.float64)
    out = np.where(area >= threshold_um2, 1, 0).astype(np.int64)
    out[~np.isfinite(area)] = UNKNOWN
    return out


def _check_threshold(threshold_um2: Any) -> float:
    try:
        value = float(threshold_um2)
    except (TypeError, ValueError):
        raise ValueError(f"size threshold must be a number of µm², got {threshold_um2!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"size threshold must be a positive number of µm², got {threshold_um2!r}")
    return value


@dataclass(frozen=True)
class ObjectSpec:
    """What the objects are called in the outputs and, optionally, their small/large size classes."""

    name: str = "Nucleus"
    threshold_um2: float | None = None  # None: no size classes
    names: tuple[str, str] = _DEFAULT_NAMES

    @classmethod
    def from_config(cls, objects: Mapping[str, Any] | None, threshold_um2: float | None = None) -> ObjectSpec:
        """From a ModelConfig.objects dict; ``threshold_um2`` overrides (and turns on) the size classes."""
        objects = dict(objects or {})
        name = str(objects.get("name", "Nucleus"))
        sizes = objects.get("size_classes")
        if sizes is None and threshold_um2 is None:
            return cls(name)
        sizes = dict(sizes or {})
        names = tuple(str(n) for n in sizes.get("names", _DEFAULT_NAMES))
        if len(names) != 2:
            raise ValueError(f"size_classes names must be two (small, large), got {list(names)}")
        if threshold_um2 is None:
            threshold_um2 = sizes.get("threshold_um2", DEFAULT_LARGE_THRESHOLD_UM2)
        return cls(name, _check_threshold(threshold_um2), (names[0], names[1]))

    @property
    def sized(self) -> bool:
        """Whether objects are split into small and large."""
        return self.threshold_um2 is not None

    def geojson_classes(self) -> dict[int, tuple[str, tuple[int, int, int]]]:
        """QuPath classification (name, colour) per size class code; empty without size classes."""
        if not self.sized:
            return {}
        return {0: (f"{self.name} {self.names[0]}", _SMALL_COLOUR), 1: (f"{self.name} {self.names[1]}", _LARGE_COLOUR),
                UNKNOWN: (self.name, _PLAIN_COLOUR)}


def objects_with_threshold(objects: Mapping[str, Any] | None, threshold_um2: float) -> dict[str, Any]:
    """A copy of a ModelConfig.objects dict with the size-class threshold set (classes added if absent)."""
    out = dict(objects or {})
    sizes = dict(out.get("size_classes") or {})
    sizes["threshold_um2"] = _check_threshold(threshold_um2)
    sizes.setdefault("names", list(_DEFAULT_NAMES))
    out["size_classes"] = sizes
    return out


def population_summary(table: Mapping[str, Any], area_mm2: float | None, threshold_um2: float | None) -> dict:
    """Count, density per mm² of ``area_mm2``, small/large counts and area quantiles (µm²) of a table."""
    area = np.asarray(table.get("area_um2", np.empty(0)), dtype=np.float64).ravel()
    n = len(np.asarray(table["id"]).ravel()) if "id" in table else len(area)
    known = area[np.isfinite(area)]
    valid_area = area_mm2 is not None and math.isfinite(area_mm2) and area_mm2 > 0
    summary: dict[str, Any] = {
        "count": n,
        "area_mm2": float(area_mm2) if area_mm2 is not None and math.isfinite(area_mm2) else None,
        "density_per_mm2": n / area_mm2 if valid_area else None,
        "threshold_um2": None if threshold_um2 is None else _check_threshold(threshold_um2),
        "n_small": None,
        "n_large": None,
        "n_unknown": None,
        "large_fraction": None,
    }
    if threshold_um2 is not None:
        classes = size_class(area, threshold_um2)
        n_small, n_large = int((classes == 0).sum()), int((classes == 1).sum())
        summary.update(n_small=n_small, n_large=n_large, n_unknown=int((classes == UNKNOWN).sum()),
                       large_fraction=n_large / (n_small + n_large) if n_small + n_large else None)
        if valid_area:
            summary.update(density_small_per_mm2=n_small / area_mm2, density_large_per_mm2=n_large / area_mm2)
    stats: dict[str, Any] = {"n": len(known), "mean": float(known.mean()) if len(known) else None}
    values = np.percentile(known, _QUANTILES) if len(known) else [None] * len(_QUANTILES)
    stats.update({f"p{q}": None if v is None else float(v) for q, v in zip(_QUANTILES, values)})
    summary["area_um2"] = stats
    return summary


def write_area_histogram(path: str | Path, area_um2: Any, threshold_um2: float | None, title: str = "",
                         bins: int | Sequence[float] = 40) -> bool:
    """Write a PNG histogram of object areas (log-spaced bins, threshold marked); False if no area is known."""
    path = Path(path)
    area = np.asarray(area_um2, dtype=np.float64).ravel()
    area = area[np.isfinite(area) & (area > 0)]
    if not len(area):
        log.info("%s: not written, no object with a known area in µm² (no objects, or no pixel size)", path)
        return False
    # Imported here: matplotlib costs ~0.3 s to import and only this output needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from pathseg.io.write import atomic_open

    if isinstance(bins, int):
        lo, hi = float(area.min()), float(area.max())
        if threshold_um2 is not None:
            lo, hi = min(lo, threshold_um2), max(hi, threshold_um2)
        edges = np.geomspace(lo * 0.95, hi * 1.05, bins + 1)
    else:
        edges = np.asarray(bins, dtype=np.float64)
    # A Figure on an Agg canvas, not pyplot: no display, no global backend switch, safe in threads.
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if threshold_um2 is None:
        ax.hist(area, bins=edges, color="0.4")
    else:
        classes = size_class(area, threshold_um2)
        small, large = area[classes == 0], area[classes == 1]
        ax.hist([small, large], bins=edges, stacked=True, color=[np.divide(_SMALL_COLOUR, 255), np.divide(_LARGE_COLOUR, 255)],
                label=[f"small (n={len(small)})", f"large (n={len(large)})"])
        ax.axvline(threshold_um2, color="k", linestyle="--", linewidth=1)
        ax.legend(title=f"threshold {threshold_um2:g} µm²", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("object area (µm²)")
    ax.set_ylabel("objects")
    ax.set_title(title or f"{len(area)} objects")
    fig.tight_layout()
    with atomic_open(path) as fh:
        # No date or software stamp in the PNG: re-runs give identical files.
        fig.savefig(fh, format="png", metadata={"Software": None})
    return True
