"""Whole slides: streamed, resumable, bounded-memory segmentation of gigapixel images."""

from pathseg.wsi.engine import SlideOptions
from pathseg.wsi.run import SlideResult, segment_slide

__all__ = ["SlideOptions", "SlideResult", "segment_slide"]
