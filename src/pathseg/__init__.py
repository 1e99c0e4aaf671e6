"""pathseg: deep-learning segmentation of histopathology images."""

from pathseg._version import __version__
from pathseg.models import load_model
from pathseg.pipeline import SegmentationResult, segment

__all__ = ["SegmentationResult", "__version__", "load_model", "segment"]
