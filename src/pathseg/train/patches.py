"""Training data for the nuclei model: targets, weight maps and the patch grid."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import disk

from pathseg.instances import three_class_target
from pathseg.io import check_pair, list_samples, read_image, read_label
from pathseg.losses import background_weight_map
from pathseg.stain import background_cluster

log = logging.getLogger(__name__)


@dataclass
class PreparedImage:
    """One training image with its class target and per-pixel loss weight."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8
    target: np.ndarray  # (H, W) uint8 classes
    weight: np.ndarray  # (H, W) float32 (m_hat for the weighted loss)
    n_kept: int
    n_total: int


@dataclass(frozen=True)
class WeightConfig:
    """Parameters of the weighted-background mask m_hat."""

    alpha: float = 10.0
    beta: float = 0.1
    lam: float = 0.5
    erosion_radius: int = 3


def drop_annotations(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Keep a random `fraction` of the instances (the rest become unannotated, 0)."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if fraction >= 1.0 or len(ids) == 0:
        return labels
    keep = rng.random(len(ids)) < fraction
    lut = np.zeros(int(labels.max()) + 1, labels.dtype)
    lut[ids[keep]] = ids[keep]
    return lut[labels]


def prepare_dataset(
    root: str | Path, partial_fraction: float = 1.0, seed: int = 0, wcfg: WeightConfig | None = None,
    mpp: float | None = None,
) -> list[PreparedImage]:
    """Read a dataset folder and build targets and weight maps for every image."""
    wcfg = wcfg or WeightConfig()
    out = []
    for i, s in enumerate(list_samples(root)):
        image, file_mpp = read_image(s.image)
        if mpp and file_mpp and abs(file_mpp / mpp - 1) > 0.1:
            log.warning("%s: file says %.3f um/px but training assumes %.3f (--mpp)", s.image, file_mpp, mpp)
        labels = read_label(s.label)
        check_pair(image, labels, s.name)
        rng = np.random.default_rng([seed, i])
        kept = drop_annotations(labels, partial_fraction, rng)
        annotated = kept > 0
        bg = background_cluster(image, wcfg.erosion_radius, seed=seed)
        weight = background_weight_map(annotated, bg & ~annotated, wcfg.alpha, wcfg.beta, wcfg.lam)
        n_total = len(np.unique(labels)) - 1
        n_kept = len(np.unique(kept)) - 1
        out.append(PreparedImage(s.name, image, three_class_target(kept), weight, n_kept, n_total))
        log.info("%s: %d of %d nuclei kept", s.name, n_kept, n_total)
    return out


def patch_grid(
    item: PreparedImage, size: int = 256, stride: int = 128, min_fg: float = 0.10, min_bg: float = 0.40
) -> list[tuple[int, int]]:
    """Top-left corners of the patches whose dilated fg / bg masks cover enough pixels."""
    h, w = item.target.shape
    fg = ndi.binary_dilation(item.target > 0, disk(3))
    bg = ndi.binary_dilation((item.target == 0) & (item.weight > 0), disk(3))
    ys = sorted({*range(0, max(1, h - size + 1), stride), max(0, h - size)})
    xs = sorted({*range(0, max(1, w - size + 1), stride), max(0, w - size)})
    keep = []
    area = float(size * size)
    for y in ys:
        for x in xs:
            if fg[y : y + size, x : x + size].sum() > min_fg * area and bg[y : y + size, x : x + size].sum() > min_bg * area:
                keep.append((y, x))
    return keep
