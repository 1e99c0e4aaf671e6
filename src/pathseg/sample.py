"""The built-in sample image of `pathseg demo` (ships with scikit-image, no download)."""

from __future__ import annotations

import numpy as np

SAMPLE_NAME = "skimage-ihc"
SAMPLE_DESCRIPTION = (
    "scikit-image's `data.immunohistochemistry()`: a 512x512 real brightfield micrograph of "
    "human colon tissue, IHC for FHL2 (brown DAB) with haematoxylin-counterstained (blue) "
    "nuclei; no known copyright restrictions (scikit-image). About 0.5 um/px (our estimate from nucleus size)."
)
# Estimated from the image: its nuclei are ~15 px across, half the ~30 px of MoNuSeg's 0.25 um/px.
SAMPLE_MPP = 0.5


def sample_image() -> np.ndarray:
    """The demo image as RGB uint8 (512, 512, 3)."""
    from skimage import data

    return np.ascontiguousarray(data.immunohistochemistry())
