"""Reading images and datasets, writing label maps, overlays, tables and QuPath GeoJSON."""

from __future__ import annotations

from pathseg.io.dataset import LABEL_SUFFIXES, Sample, check_pair, list_samples, read_label
from pathseg.io.read import IMAGE_SUFFIXES, MAX_PIXELS, MPP_RANGE, list_images, open_pillow, read_image
from pathseg.io.slide import SLIDE_SUFFIXES, Slide, is_slide, open_slide, slide_name
from pathseg.io.write import (
    atomic_open,
    ensure_output_dir,
    instance_polygons,
    write_geojson,
    write_json,
    write_label_map,
    write_overlay,
    write_table_csv,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "LABEL_SUFFIXES",
    "MAX_PIXELS",
    "MPP_RANGE",
    "SLIDE_SUFFIXES",
    "Slide",
    "Sample",
    "atomic_open",
    "check_pair",
    "ensure_output_dir",
    "instance_polygons",
    "is_slide",
    "list_images",
    "list_samples",
    "open_pillow",
    "open_slide",
    "read_image",
    "read_label",
    "slide_name",
    "write_geojson",
    "write_json",
    "write_label_map",
    "write_overlay",
    "write_table_csv",
]
