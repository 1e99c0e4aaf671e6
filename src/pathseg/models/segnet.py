"""SegNet (Badrinarayanan et al. 2017): VGG-style encoder, decoder unpooling with the stored max-pool indices."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pathseg.models._registry import register_model
from pathseg.models.unet import check_input_size


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    # SegNet uses conv -> BN -> ReLU; BN makes the conv bias redundant.
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _stage(cin: int, cout: int, n: int, out_last: bool) -> nn.Sequential:
    """`n` conv-BN-ReLU layers from `cin` to `cout` channels; the first (encoder) or last (decoder) one changes width."""
    layers: list[nn.Module] = []
    for i in range(n):
        if out_last:
            a, b = cin, (cout if i == n - 1 else cin)
        else:
            a, b = (cin if i == 0 else cout), cout
        layers += _conv_bn_relu(a, b)
    return nn.Sequential(*layers)


@register_model("segnet")
class SegNet(nn.Module):
    """SegNet with `depth` pooling stages; stage i has ``convs[i]`` convolutions of ``min(width * 2**i, 8 * width)`` channels.

    ``width=64, depth=5`` with the default `convs` is the paper's VGG16 encoder (13 convolutions).
    Each decoder stage upsamples with ``max_unpool2d`` at the positions the matching encoder
    pooling took its maxima from, then mirrors the encoder convolutions; a 1x1 conv gives the
    class logits. ``embed_dim > 0`` adds a second 1x1 head (the raw pixel embedding) on the
    same last decoder features, as UNet does. Inputs must be multiples of ``2**depth``.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 2, embed_dim: int = 0, width: int = 16, depth: int = 5,
                 convs: Sequence[int] = (2, 2, 3, 3, 3)) -> None:
        super().__init__()
        convs = [int(c) for c in convs]
        if depth < 1 or len(convs) < depth:
            raise ValueError(f"depth must be in 1..{len(convs)} (one entry of convs per stage), got {depth}")
        if min(convs[:depth]) < 1:
            raise ValueError(f"each stage needs at least one convolution, got convs={convs}")
        if embed_dim < 0:
            raise ValueError(f"embed_dim must be >= 0, got {embed_dim}")
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "embed_dim": embed_dim, "width": width,
                       "depth": depth, "convs": convs[:depth]}
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        chans = [min(width * 2**i, 8 * width) for i in range(depth)]
        self.encoders = nn.ModuleList()
        cin = in_channels
        for c, n in zip(chans, convs):
            self.encoders.append(_stage(cin, c, n, out_last=False))
            cin = c
        # decoders[k] undoes encoder stage depth-1-k: same number of convs, the last one narrows to the next stage.
        self.decoders = nn.ModuleList()
        for i in range(depth - 1, -1, -1):
            self.decoders.append(_stage(chans[i], chans[max(i - 1, 0)], convs[i], out_last=True))
        self.head = nn.Conv2d(chans[0], num_classes, 1)
        if embed_dim:
            self.embed_head = nn.Conv2d(chans[0], embed_dim, 1)

    @property
    def required_multiple(self) -> int:
        """Input height and width must be multiples of this."""
        return 2 ** self.config["depth"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return per-pixel class logits then embedding, (N, num_classes + embed_dim, H, W)."""
        check_input_size(x, self.required_multiple)
        pooled = []
        for enc in self.encoders:
            x = enc(x)
            size = x.shape[-2:]
            # Only the argmax indices travel to the decoder (not whole feature maps as in UNet).
            x, idx = F.max_pool2d(x, 2, return_indices=True)
            pooled.append((idx, size))
        for dec in self.decoders:
            idx, size = pooled.pop()
            x = dec(F.max_unpool2d(x, idx, 2, output_size=size))
        if self.embed_dim:
            return torch.cat([self.head(x), self.embed_head(x)], dim=1)
        return self.head(x)
