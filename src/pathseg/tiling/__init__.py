"""Tiling of images into overlapping windows and stitching of the network's output."""

from pathseg.tiling.windows import InferenceOptions, autocast_context, pick_device, predict_probs, window_grid

__all__ = ["InferenceOptions", "autocast_context", "pick_device", "predict_probs", "window_grid"]
