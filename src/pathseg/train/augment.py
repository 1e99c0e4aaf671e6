"""Patch augmentation: 90-degree rotations, flips, elastic deformation, HED stain jitter."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from pathseg.stain import hed_jitter


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and strengths of each augmentation."""

    flip_rotate: bool = True
    elastic_p: float = 0.5
    elastic_alpha: float = 30.0  # displacement scale, px
    elastic_sigma: float = 8.0  # smoothness of the displacement field, px
    stain_p: float = 0.8
    stain_scale: float = 0.05
    stain_shift: float = 0.02


def augment(
    image: np.ndarray, target: np.ndarray, weight: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply the same random geometric transform to image, class target and weight map."""
    if cfg.flip_rotate:
        k = int(rng.integers(4))
        image, target, weight = (np.rot90(a, k) for a in (image, target, weight))
        if rng.random() < 0.5:
            image, target, weight = image[:, ::-1], target[:, ::-1], weight[:, ::-1]
    if rng.random() < cfg.elastic_p:
        image, target, weight = _elastic(image, target, weight, rng, cfg.elastic_alpha, cfg.elastic_sigma)
    if rng.random() < cfg.stain_p:
        image = hed_jitter(np.ascontiguousarray(image), rng, cfg.stain_scale, cfg.stain_shift)
    return np.ascontiguousarray(image), np.ascontiguousarray(target), np.ascontiguousarray(weight)


def _elastic(image, target, weight, rng, alpha, sigma):
    h, w = target.shape
    # Smooth a coarse random field instead of a full-resolution one: same look, ~16x cheaper.
    step = 8
    coarse = rng.uniform(-1, 1, size=(2, h // step + 2, w // step + 2))
    coarse = ndi.gaussian_filter(coarse, (0, sigma / step, sigma / step))
    coarse *= alpha / (np.abs(coarse).max() + 1e-8)
    zoom = (1, (h + 2 * step) / coarse.shape[1], (w + 2 * step) / coarse.shape[2])
    field = ndi.zoom(coarse, zoom, order=1)[:, :h, :w]
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = np.stack([yy + field[0], xx + field[1]])
    img = np.stack([ndi.map_coordinates(image[..., c], coords, order=1, mode="reflect") for c in range(image.shape[2])], -1)
    tgt = ndi.map_coordinates(target, coords, order=0, mode="reflect")
    wgt = ndi.map_coordinates(weight, coords, order=1, mode="reflect")
    return img.astype(np.uint8), tgt.astype(target.dtype), wgt.astype(np.float32)
