"""Measurements of segmented instances (morphometry, stain intensity)."""

from __future__ import annotations

from pathseg.measure.morphometry import COLUMNS, measure_instances, table_rows

__all__ = ["COLUMNS", "measure_instances", "table_rows"]
