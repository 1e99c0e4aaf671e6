"""Tiling: tissue and regions of interest, overlapping windows, stitching of the network's output."""

from pathseg.tiling.tissue import Roi, parse_roi, roi_mask, select_tiles, tissue_area_um2, tissue_mask
from pathseg.tiling.windows import InferenceOptions, autocast_context, pick_device, predict_probs, window_grid

__all__ = ["InferenceOptions", "Roi", "autocast_context", "parse_roi", "pick_device", "predict_probs", "roi_mask",
           "select_tiles", "tissue_area_um2", "tissue_mask", "window_grid"]
