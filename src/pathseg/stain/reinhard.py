"""Reinhard colour normalisation: match an image's CIELAB mean/std to a reference.

Reinhard et al., "Color transfer between images", IEEE CG&A 2001; the variational-network
paper normalises its H&E images this way before fitting colours and before inference. Only
tissue pixels enter the statistics: bright glass (L > 90) would pull the mean towards white.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
from skimage.color import lab2rgb, rgb2lab

from pathseg.errors import InputError

GLASS_L = 90.0  # CIELAB lightness above which a pixel is slide glass, not tissue


def _float_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {img.shape}")
    return img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)


def lab_stats(image: np.ndarray, mask: np.ndarray | None = None, max_pixels: int = 1_000_000) -> dict[str, list[float]]:
    """Mean and std per CIELAB channel of the tissue pixels of an RGB image (uint8 or float in [0, 1])."""
    rgb = _float_rgb(image)
    pix = rgb.reshape(-1, 3) if mask is None else rgb[np.asarray(mask, bool)]
    if len(pix) > max_pixels:  # a fixed stride keeps this deterministic and bounded on slides
        pix = pix[:: int(np.ceil(len(pix) / max_pixels))]
    lab = rgb2lab(pix[None]).reshape(-1, 3) if len(pix) else np.zeros((0, 3))
    tissue = lab[lab[:, 0] <= GLASS_L]
    if len(tissue) < 16:  # an all-glass image: keep every pixel rather than none
        tissue = lab
    if len(tissue) == 0:
        return {"mean": [50.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    return {"mean": tissue.mean(0).tolist(), "std": np.maximum(tissue.std(0), 1e-3).tolist()}


def check_stats(stats: object, where: str) -> dict[str, list[float]]:
    """Validate a {"mean": [3], "std": [3]} CIELAB statistics dict, naming `where` on error."""
    if not isinstance(stats, dict) or not {"mean", "std"} <= set(stats):
        raise InputError(f"{where}: expected {{'mean': [L, a, b], 'std': [L, a, b]}}")
    out = {}
    for key in ("mean", "std"):
        try:
            v = np.asarray(stats[key], dtype=float)
        except (TypeError, ValueError):
            v = np.zeros(0)  # not numbers: reported below like a wrong shape
        if v.shape != (3,) or not np.isfinite(v).all():
            raise InputError(f"{where}.{key}: expected 3 finite numbers, got shape {v.shape}")
        if key == "std" and (v <= 0).any():
            raise InputError(f"{where}.std: values must be > 0")
        out[key] = v.tolist()
    return out


def reinhard(image: np.ndarray, target: dict, source: dict | None = None) -> np.ndarray:
    """The image with its tissue's CIELAB mean/std moved to `target`'s; float32 RGB in [0, 1]."""
    rgb = _float_rgb(image)
    src = source or lab_stats(rgb)
    t_mean, t_std = np.asarray(target["mean"], np.float32), np.asarray(target["std"], np.float32)
    s_mean, s_std = np.asarray(src["mean"], np.float32), np.asarray(src["std"], np.float32)
    lab = rgb2lab(rgb).astype(np.float32)
    glass = lab[..., 0] > GLASS_L
    out = (lab - s_mean) * (t_std / s_std) + t_mean
    # Glass stays glass: stretching it with the tissue's std would tint the background.
    out[glass] = lab[glass]
    with warnings.catch_warnings():  # out-of-gamut values are clipped on purpose; skimage warns about it
        warnings.filterwarnings("ignore", message=".*negative Z values", category=UserWarning)
        rgb_out = lab2rgb(out)
    return np.clip(rgb_out, 0.0, 1.0).astype(np.float32)


def make_normaliser(config: dict | None, reference: np.ndarray,
                    mask: np.ndarray | None = None) -> Callable[[np.ndarray], np.ndarray] | None:
    """A uint8 -> uint8 colour normaliser from a model's `normalise` config, or None when it asks for none.

    The source statistics come from `reference` (the whole image, or a slide's thumbnail with
    its tissue `mask`) once, so every tile of a slide is mapped by the same transform.
    """
    if not config or config.get("kind", "none") == "none":
        return None
    if config.get("kind") != "reinhard":
        raise InputError(f"model config normalise.kind {config.get('kind')!r}: unknown (reinhard or none)")
    target = check_stats(config.get("target"), "model config normalise.target")
    source = lab_stats(reference, mask)

    def apply(rgb: np.ndarray) -> np.ndarray:
        return (reinhard(rgb, target, source) * 255.0 + 0.5).astype(np.uint8)

    return apply
