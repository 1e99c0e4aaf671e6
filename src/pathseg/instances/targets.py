"""Training targets: instance map -> background / interior / boundary classes."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2


def three_class_target(labels: np.ndarray, width: int = 2) -> np.ndarray:
    """Class map (uint8): 0 background, 1 nucleus interior, 2 the inner `width`-px rim.

    A rim pixel is one whose (2*width+1)^2 neighbourhood holds another id (or background),
    so touching nuclei are separated by a band of boundary class that the network learns
    and the watershed later floods from the interiors.
    """
    labels = np.asarray(labels)
    fg = labels > 0
    size = 2 * width + 1
    hi = ndi.maximum_filter(labels, size=size, mode="nearest")
    lo = ndi.minimum_filter(labels, size=size, mode="nearest")
    rim = fg & ((hi != labels) | (lo != labels))
    out = np.zeros(labels.shape, np.uint8)
    out[fg] = INTERIOR
    out[rim] = BOUNDARY
    return out
