"""Euclidean projections of filter kernels onto the variational network's constraint sets.

Both are exact, vectorised over rows and cost one or two sorts per call; the network
projects all its kernels after every Adam step, so no iterative solver runs in training.
"""

from __future__ import annotations

import torch


def _threshold(v: torch.Tensor, z: float) -> torch.Tensor:
    """Per row, the theta with sum((v - theta)_+) == z (z > 0): Duchi et al. 2008, Fig. 1."""
    srt = torch.sort(v, dim=1, descending=True).values
    css = srt.cumsum(1) - z
    j = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)
    # rho = largest j with srt_j > (cumsum_j - z) / j; the condition holds on a prefix of j.
    rho = (srt * j > css).sum(1, keepdim=True).clamp(min=1)
    return css.gather(1, rho - 1) / rho.to(v.dtype)


def _check_rows(w: torch.Tensor, radius: float) -> None:
    if w.ndim != 2:
        raise ValueError(f"expected rows (K, n), got shape {tuple(w.shape)}")
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius}")


def project_l1_ball(w: torch.Tensor, radius: float = 1.0) -> torch.Tensor:
    """Project each row of w (K, n) onto {||x||_1 <= radius}; rows already inside are unchanged."""
    _check_rows(w, radius)
    a = w.abs()
    inside = a.sum(1, keepdim=True) <= radius
    x = torch.sign(w) * (a - _threshold(a, radius)).clamp(min=0)
    # Rows already inside keep their exact values (no round-off from the shrinkage).
    return torch.where(inside, w, x)


def project_zero_mean_l1(w: torch.Tensor, radius: float = 1.0) -> torch.Tensor:
    """Project each row of w (K, n) onto {sum x = 0, ||x||_1 <= radius} (the paper's set K).

    KKT: x = soft(w - mu, tau). If the centred row is inside the ball it is the answer
    (tau = 0). Otherwise tau > 0, and sum x = 0 with ||x||_1 = radius means the positive
    entries sum to radius/2 and the negative ones to -radius/2; since soft-thresholding
    keeps the order of w, the upper threshold a = mu + tau and the lower b = mu - tau solve
    two independent simplex-type equations: sum (w - a)_+ = r/2 and sum (b - w)_+ = r/2.
    (One checks a > mean(w) > b, so tau = (a - b)/2 > 0.) Exact, no iterations.
    """
    _check_rows(w, radius)
    centred = w - w.mean(1, keepdim=True)
    inside = centred.abs().sum(1, keepdim=True) <= radius
    a = _threshold(w, radius / 2)
    b = -_threshold(-w, radius / 2)
    x = (w - a).clamp(min=0) - (b - w).clamp(min=0)
    return torch.where(inside, centred, x)
