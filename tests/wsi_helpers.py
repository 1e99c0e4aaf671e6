"""A pointwise colour 'network' with exact outputs and synthetic disc slides, for slide-engine tests.

The network sees one pixel at a time, so tiling cannot change its output: any difference
between a slide run and a whole-image reference comes from the engine itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from pathseg.models import LoadedModel, ModelConfig

PURPLE = (90, 50, 150)
PINK = (235, 160, 200)
GLASS = (245, 245, 245)


class ColourNet(nn.Module):
    """Logits (background, nucleus) from the red channel: purple is nucleus, pink and glass are not."""

    required_multiple = 1

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            # Input is (rgb/255 - 0.5) / 0.25; red of purple -> -0.59, of pink -> 1.69.
            self.conv.weight[1, 0] = -4.0
            self.conv.bias[1] = 2.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits."""
        return self.conv(x)


def colour_model(mpp: float = 0.5) -> LoadedModel:
    """The colour network wrapped as a loaded pathseg model at ``mpp``."""
    cfg = ModelConfig(arch="colour", arch_kwargs={}, classes=["background", "nucleus"], mpp=mpp,
                      postprocess={"fg_threshold": 0.5, "min_area_px": 4, "max_hole_px": 0, "watershed": False})
    return LoadedModel(ColourNet().eval(), cfg, "colour", "0" * 64, Path("colour"))


def disc_slide(height: int, width: int, n: int, seed: int = 0, radius: tuple[int, int] = (5, 12),
               tissue: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """RGB image of separated purple discs on pink tissue (optionally only inside a box on glass) and its labels."""
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), np.uint8)
    image[:] = GLASS if tissue else PINK
    y0, x0, y1, x1 = tissue or (0, 0, height, width)
    image[y0:y1, x0:x1] = PINK
    labels = np.zeros((height, width), np.int32)
    k = 0
    for _ in range(n * 20):
        if k == n:
            break
        r = int(rng.integers(*radius))
        cy, cx = int(rng.integers(y0 + r, y1 - r)), int(rng.integers(x0 + r, x1 - r))
        ys = slice(max(0, cy - r - 2), min(height, cy + r + 3))
        xs = slice(max(0, cx - r - 2), min(width, cx + r + 3))
        yy, xx = np.mgrid[ys, xs]
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if _near(labels, cy, cx, r):
            continue
        k += 1
        labels[ys, xs][disc] = k
        image[ys, xs][disc] = PURPLE
    return image, labels


def _near(labels: np.ndarray, cy: int, cx: int, r: int) -> bool:
    # Keep a 3-px gap so discs never touch (connected components must separate them).
    ys = slice(max(0, cy - r - 3), cy + r + 4)
    xs = slice(max(0, cx - r - 3), cx + r + 4)
    return bool(labels[ys, xs].any())


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label maps hold the same objects, up to renumbering."""
    if a.shape != b.shape or ((a > 0) != (b > 0)).any():
        return False
    fg = a > 0
    pairs = np.unique(np.stack([a[fg], b[fg]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))
