"""Loss for partially annotated nuclei: cross-entropy with a weighted background.

Nuclei paper, Eq. (5): L = -sum[ y log p_fg + m_hat (1 - y) log p_bg ] + gamma ||w||^2, with
m = 1 where the distance d to the nearest annotated nucleus is <= alpha, exp(-beta (d - alpha))
beyond, and m_hat = max(m, lambda * (b eroded by disk(c))), b the k-means background cluster.
We generalise y to several foreground classes (nucleus interior, nucleus boundary): every
annotated pixel has weight 1 on its class, every unannotated pixel weight m_hat on background.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import ndimage as ndi

from pathseg.losses._registry import register_loss


def background_weight_map(
    annotated: np.ndarray,
    background: np.ndarray | None = None,
    alpha: float = 10.0,
    beta: float = 0.1,
    lam: float = 0.5,
) -> np.ndarray:
    """Per-pixel weight map m_hat (float32, (H, W)); 1 on annotated foreground pixels."""
    annotated = annotated.astype(bool)
    if annotated.any():
        d = ndi.distance_transform_edt(~annotated)
        m = np.where(d <= alpha, 1.0, np.exp(-beta * (d - alpha)))
    else:
        m = np.zeros(annotated.shape)
    if background is not None:
        m = np.maximum(m, lam * background.astype(np.float64))
    m[annotated] = 1.0
    return m.astype(np.float32)


def l2_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of squared convolution weights (the gamma ||w||^2 term; biases and BN excluded)."""
    terms = [m.weight.pow(2).sum() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    return torch.stack(terms).sum() if terms else torch.zeros(())


@register_loss("weighted_ce")
class WeightedBackgroundCE(nn.Module):
    """Cross-entropy where each pixel counts with a given weight (the m_hat map).

    The sum of weighted per-pixel losses is divided by the number of pixels (not by the
    sum of weights), so that down-weighting uncertain background lowers its pull instead of
    being renormalised away; this is Eq. (5) up to a constant factor.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over pixels of weight * CE(logits, target)."""
        ce = F.cross_entropy(logits.float(), target, reduction="none")
        if weight is not None:
            ce = ce * weight
        return ce.mean()


@register_loss("ce")
class PlainCE(nn.Module):
    """Ordinary per-pixel cross-entropy for fully annotated data; any weight map is ignored."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over pixels of CE(logits, target)."""
        return F.cross_entropy(logits.float(), target)
