"""Instance-embedding losses of the TAM paper (2.5.2): De Brabandere et al. 2017, and the TAM training loss.

De Brabandere, Neven & Van Gool, "Semantic instance segmentation with a discriminative loss function" (2017):
    L_var  = 1/C sum_c 1/N_c sum_{i in c} [||mu_c - x_i|| - delta_v]_+^2
    L_dist = 1/(C (C - 1)) sum_{cA != cB} [2 delta_d - ||mu_cA - mu_cB||]_+^2
    L_reg  = 1/C sum_c ||mu_c||
    L = alpha L_var + beta L_dist + gamma L_reg, per image, averaged over images with >= 1 instance.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from pathseg.losses._registry import register_loss

STRATEGIES = ("baseline", "weights", "instance")


@register_loss("discriminative")
class DiscriminativeLoss(nn.Module):
    """De Brabandere et al. discriminative loss on a pixel embedding; instance id 0 is ignored."""

    def __init__(self, delta_v: float = 0.5, delta_d: float = 1.5, alpha: float = 1.0, beta: float = 1.0,
                 gamma: float = 0.001) -> None:
        super().__init__()
        self.delta_v, self.delta_d = float(delta_v), float(delta_d)
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)

    def terms(self, embedding: torch.Tensor, instances: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted var, dist and reg terms (scalars), each averaged over images with >= 1 instance."""
        if embedding.dim() != 4 or instances.shape != (embedding.shape[0], *embedding.shape[2:]):
            raise ValueError(f"embedding (N, E, H, W) and instances (N, H, W) expected, got "
                             f"{tuple(embedding.shape)} and {tuple(instances.shape)}")
        if embedding.dtype in (torch.float16, torch.bfloat16):
            embedding = embedding.float()  # norms and squares of a half embedding lose too much
        n, e = embedding.shape[:2]
        x = embedding.permute(0, 2, 3, 1).reshape(-1, e)
        ids = instances.reshape(-1).long()
        image = torch.arange(n, device=ids.device).repeat_interleave(ids.numel() // n)
        fg = ids > 0
        zero = embedding.sum() * 0.0  # keeps the graph: a batch without instances still backpropagates
        if not bool(fg.any()):
            return {"var": zero, "dist": zero, "reg": zero}
        x, ids, image = x[fg], ids[fg], image[fg]
        # One cluster per (image, id): ids need not be consecutive, nor unique across images.
        key = image * (int(ids.max()) + 1) + ids
        uniq, inv = torch.unique(key, return_inverse=True)
        k = uniq.numel()
        cluster_image = uniq // (int(ids.max()) + 1)
        count = torch.bincount(inv, minlength=k).to(x.dtype)
        mu = torch.zeros(k, e, dtype=x.dtype, device=x.device).index_add(0, inv, x) / count[:, None]

        hinge_v = F.relu(torch.linalg.vector_norm(mu[inv] - x, dim=1) - self.delta_v) ** 2
        var_c = torch.zeros(k, dtype=x.dtype, device=x.device).index_add(0, inv, hinge_v) / count

        # All cluster pairs at once, masked to ordered pairs of distinct clusters in the same image.
        # (vector_norm's gradient at 0, on the masked diagonal, is 0, not NaN.)
        pair_d = torch.linalg.vector_norm(mu[:, None, :] - mu[None, :, :], dim=2)
        same = (cluster_image[:, None] == cluster_image[None, :]) & ~torch.eye(k, dtype=torch.bool, device=x.device)
        hinge_d = torch.where(same, F.relu(2.0 * self.delta_d - pair_d) ** 2, torch.zeros_like(pair_d))

        per_image = torch.bincount(cluster_image, minlength=n).to(x.dtype)
        has = per_image > 0
        pairs = per_image * (per_image - 1)

        def image_sum(v: torch.Tensor) -> torch.Tensor:
            return torch.zeros(n, dtype=x.dtype, device=x.device).index_add(0, cluster_image, v)

        var_i = image_sum(var_c)[has] / per_image[has]
        dist_i = image_sum(hinge_d.sum(1))[has] / pairs[has].clamp(min=1.0)  # one instance: no pair, 0
        reg_i = image_sum(torch.linalg.vector_norm(mu, dim=1))[has] / per_image[has]
        return {"var": var_i.mean() + zero, "dist": dist_i.mean() + zero, "reg": reg_i.mean() + zero}

    def forward(self, embedding: torch.Tensor, instances: torch.Tensor) -> torch.Tensor:
        """alpha L_var + beta L_dist + gamma L_reg, a scalar."""
        t = self.terms(embedding, instances)
        return self.alpha * t["var"] + self.beta * t["dist"] + self.gamma * t["reg"]


@register_loss("tam")
class TamLoss(nn.Module):
    """TAM training loss: CE ("baseline"), per-pixel weighted CE ("weights"), or CE + discriminative ("instance")."""

    def __init__(self, strategy: str = "baseline", num_classes: int = 2, disc: dict[str, Any] | None = None) -> None:
        super().__init__()
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown TAM strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
        self.strategy, self.num_classes = strategy, int(num_classes)
        self.disc = DiscriminativeLoss(**(disc or {}))

    def forward(self, output: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                instances: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """dict(loss, ce, disc) from the network output (N, C + E, H, W) and its targets."""
        logits = output[:, : self.num_classes].float()
        ce_px = F.cross_entropy(logits, target, reduction="none")
        if self.strategy == "weights":
            if weight is None:
                raise ValueError("TamLoss(strategy='weights') needs the per-pixel weight map")
            # Divided by the pixel count, not the weight sum, as WeightedBackgroundCE: the weights
            # change the relative pull of pixels and the overall scale, as in the paper's weighting.
            ce = (ce_px * weight).mean()
        else:
            ce = ce_px.mean()
        disc = ce.new_zeros(())
        if self.strategy == "instance":
            if instances is None:
                raise ValueError("TamLoss(strategy='instance') needs the instance map")
            if output.shape[1] <= self.num_classes:
                raise ValueError(f"TamLoss(strategy='instance') needs embedding channels: output has {output.shape[1]} "
                                 f"channels for {self.num_classes} classes")
            disc = self.disc(output[:, self.num_classes:], instances)
        return {"loss": ce + disc, "ce": ce, "disc": disc}
