"""Stain separation, colour normalisation and stain augmentation for H&E / IHC brightfield images."""

from pathseg.stain.deconv import background_cluster, haematoxylin, hed_jitter
from pathseg.stain.reinhard import lab_stats, make_normaliser, reinhard

__all__ = ["background_cluster", "haematoxylin", "hed_jitter", "lab_stats", "make_normaliser", "reinhard"]
