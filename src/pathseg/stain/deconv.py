"""Colour deconvolution (Ruifrok & Johnston, via scikit-image) and what is built on it."""

from __future__ import annotations

import numpy as np
from skimage.color import hed2rgb, rgb2hed
from scipy.ndimage import binary_erosion
from skimage.morphology import disk
from sklearn.cluster import KMeans


def haematoxylin(image: np.ndarray) -> np.ndarray:
    """Haematoxylin optical density of an RGB uint8 image, float32 (H, W)."""
    return rgb2hed(image)[..., 0].astype(np.float32)


def background_cluster(
    image: np.ndarray, erosion_radius: int = 3, seed: int = 0, max_samples: int = 200_000
) -> np.ndarray:
    """Boolean mask of the larger of two k-means clusters of the H and E channels, eroded.

    This is the background model of the nuclei paper: on H&E most tissue area is
    eosinophilic cytoplasm/stroma or lumen, so the bigger cluster is taken as (uncertain)
    background. Erosion by a disk keeps only its confident interior.
    """
    hed = rgb2hed(image)[..., :2].reshape(-1, 2).astype(np.float32)
    rng = np.random.default_rng(seed)
    # Fit on a subsample: the two cluster centres are stable long before all pixels are used.
    fit = hed if len(hed) <= max_samples else hed[rng.choice(len(hed), max_samples, replace=False)]
    km = KMeans(n_clusters=2, n_init=3, random_state=seed).fit(fit)
    lab = km.predict(hed).reshape(image.shape[:2])
    big = int(np.bincount(lab.ravel(), minlength=2).argmax())
    mask = lab == big
    if erosion_radius > 0:
        mask = binary_erosion(mask, structure=disk(erosion_radius))
    return mask


def hed_jitter(
    image: np.ndarray, rng: np.random.Generator, scale: float = 0.05, shift: float = 0.02
) -> np.ndarray:
    """Randomly perturb each stain's optical density (Tellez et al. 2018 HED augmentation).

    Each of the H, E, D channels becomes ``od * (1 + a) + b`` with a ~ U(-scale, scale)
    and b ~ U(-shift, shift); returns an RGB uint8 image.
    """
    hed = rgb2hed(image)
    a = rng.uniform(-scale, scale, size=3)
    b = rng.uniform(-shift, shift, size=3)
    hed = hed * (1.0 + a) + b
    rgb = hed2rgb(hed)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
