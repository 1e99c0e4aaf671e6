"""The TAM paper's augmentation: any-angle rotation, scale and shear in (0.8, 1.3), elastic warp, colour changes.

A patch is sampled straight from the whole image through one coordinate map (affine plus an
elastic field), so a rotated or shrunk patch is filled with real tissue, not padding, and the
image, class target, weight map and instance map move together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.color import hsv2rgb, rgb2hsv


@dataclass(frozen=True)
class TamAugmentConfig:
    """Ranges of each augmentation (paper 2.3: morphological factors in (0.8, 1.3), any rotation)."""

    rotate: bool = True
    scale: tuple[float, float] = (0.8, 1.3)
    shear: tuple[float, float] = (0.8, 1.3)  # shear factor f: x' = x + (f - 1) y
    flip: bool = True
    elastic_p: float = 0.5
    elastic_alpha: float = 12.0  # px
    elastic_sigma: float = 10.0  # px
    exposure: tuple[float, float] = (0.8, 1.25)  # brightness gain
    contrast: tuple[float, float] = (0.8, 1.25)
    jitter: float = 0.06  # per-channel gain +- this
    hue: float = 0.03  # hue shift +- this (fraction of the colour circle)
    enabled: bool = True


def sample_patch(arrays: list[np.ndarray], orders: list[int], centre: tuple[float, float], size: int,
                 rng: np.random.Generator, cfg: TamAugmentConfig, constant: tuple[bool, ...] = ()) -> list[np.ndarray]:
    """Cut one `size`-px patch around `centre` from each array with the same random geometric transform.

    Beyond the image border arrays are mirrored, except those flagged in `constant`, which read 0
    there: a mirrored instance map would give two separate cells the same id.
    """
    half = (size - 1) / 2.0
    yy, xx = np.meshgrid(np.arange(size) - half, np.arange(size) - half, indexing="ij")
    a = np.eye(2)
    if cfg.enabled:
        if cfg.rotate:
            t = rng.uniform(0, 2 * np.pi)
            a = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        s = rng.uniform(*cfg.scale)
        k = rng.uniform(*cfg.shear) - 1.0
        a = a @ np.array([[1.0, k], [0.0, 1.0]]) / s  # output px -> input px: shrink by s
        if cfg.flip and rng.random() < 0.5:
            a = a @ np.diag([1.0, -1.0])
    coords = np.einsum("ij,jhw->ihw", a, np.stack([yy, xx]))
    coords[0] += centre[0]
    coords[1] += centre[1]
    if cfg.enabled and rng.random() < cfg.elastic_p:
        coords += _elastic_field(size, rng, cfg.elastic_alpha, cfg.elastic_sigma)
    out = []
    for i, (arr, order) in enumerate(zip(arrays, orders)):
        mode = "constant" if i < len(constant) and constant[i] else "reflect"
        if arr.ndim == 3:
            ch = [ndi.map_coordinates(arr[..., c], coords, order=order, mode=mode) for c in range(arr.shape[2])]
            out.append(np.stack(ch, -1).astype(arr.dtype))
        else:
            out.append(ndi.map_coordinates(arr, coords, order=order, mode=mode).astype(arr.dtype))
    return out


def _elastic_field(size: int, rng: np.random.Generator, alpha: float, sigma: float) -> np.ndarray:
    # A smoothed coarse random field, upsampled: the same look as a full-resolution one, far cheaper.
    step = 8
    n = size // step + 3
    coarse = ndi.gaussian_filter(rng.uniform(-1, 1, (2, n, n)), (0, sigma / step, sigma / step))
    coarse *= alpha / (np.abs(coarse).max() + 1e-8)
    return ndi.zoom(coarse, (1, step, step), order=1)[:, :size, :size]


def colour_augment(rgb: np.ndarray, rng: np.random.Generator, cfg: TamAugmentConfig) -> np.ndarray:
    """Exposure, contrast, per-channel colour jitter and hue shift of a uint8 RGB patch."""
    if not cfg.enabled:
        return rgb
    x = rgb.astype(np.float32) / 255.0
    x = x * rng.uniform(*cfg.exposure)
    mean = x.mean(axis=(0, 1), keepdims=True)
    x = (x - mean) * rng.uniform(*cfg.contrast) + mean
    x = x * (1.0 + rng.uniform(-cfg.jitter, cfg.jitter, 3)).astype(np.float32)
    x = np.clip(x, 0, 1)
    if cfg.hue:
        hsv = rgb2hsv(x)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-cfg.hue, cfg.hue)) % 1.0
        x = hsv2rgb(hsv)
    return np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8)
