"""Measurements of segmented instances (morphometry, stain intensity) and of their populations."""

from __future__ import annotations

from pathseg.measure.morphometry import COLUMNS, measure_instances, table_rows
from pathseg.measure.population import (
    DEFAULT_LARGE_THRESHOLD_UM2,
    ObjectSpec,
    objects_with_threshold,
    population_summary,
    size_class,
    write_area_histogram,
)

__all__ = ["COLUMNS", "DEFAULT_LARGE_THRESHOLD_UM2", "ObjectSpec", "measure_instances", "objects_with_threshold",
           "population_summary", "size_class", "table_rows", "write_area_histogram"]
