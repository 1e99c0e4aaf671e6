"""Stain separation and stain augmentation for H&E / IHC brightfield images."""

from pathseg.stain.deconv import background_cluster, haematoxylin, hed_jitter

__all__ = ["background_cluster", "haematoxylin", "hed_jitter"]
