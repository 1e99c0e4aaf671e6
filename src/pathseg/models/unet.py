"""UNet of the nuclei paper: 5 encoding / 5 decoding levels, zero padding, BN after ReLU.

With ``embed_dim > 0`` it also outputs a per-pixel embedding for instance segmentation.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pathseg.models._registry import register_model


def check_input_size(x: torch.Tensor, m: int) -> None:
    """Raise ValueError unless the height and width of `x` are multiples of `m`."""
    if x.shape[-1] % m or x.shape[-2] % m:
        h = -(-x.shape[-2] // m) * m
        w = -(-x.shape[-1] // m) * m
        raise ValueError(f"input {tuple(x.shape[-2:])} is not a multiple of {m}; pad it to ({h}, {w})")


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    # The paper puts BatchNorm *after* each non-linearity (conv -> ReLU -> BN), unlike the
    # usual conv -> BN -> ReLU; it argues this absorbs stain variation without pre-processing.
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=True),
        nn.ReLU(inplace=True),
        nn.BatchNorm2d(cout),
        nn.Conv2d(cout, cout, 3, padding=1, bias=True),
        nn.ReLU(inplace=True),
        nn.BatchNorm2d(cout),
    )


@register_model("unet")
class UNet(nn.Module):
    """Encoder-decoder UNet with `levels` resolution levels and skip connections.

    Level i has ``width * 2**i`` channels (i = 0..levels-1), so the input side length must
    be a multiple of ``2**(levels-1)``; :meth:`required_multiple` says which.
    ``embed_dim > 0`` adds a second 1x1 head on the last decoder features whose output
    (the raw pixel embedding) follows the class logits, as in De Brabandere et al. 2017.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 3, width: int = 16, levels: int = 5,
                 embed_dim: int = 0) -> None:
        super().__init__()
        if levels < 2:
            raise ValueError("a UNet needs at least 2 levels")
        if embed_dim < 0:
            raise ValueError(f"embed_dim must be >= 0, got {embed_dim}")
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "width": width, "levels": levels}
        if embed_dim:
            # Only when used: configs (and checkpoints) of semantic UNets stay exactly as before.
            self.config["embed_dim"] = embed_dim
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        chans = [width * 2**i for i in range(levels)]
        self.encoders = nn.ModuleList()
        cin = in_channels
        for c in chans:
            self.encoders.append(_conv_block(cin, c))
            cin = c
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in range(levels - 1, 0, -1):
            self.ups.append(nn.ConvTranspose2d(chans[i], chans[i - 1], 2, stride=2))
            self.decoders.append(_conv_block(2 * chans[i - 1], chans[i - 1]))
        self.head = nn.Conv2d(chans[0], num_classes, 1)
        # Absent (not an empty module) when embed_dim == 0, so state_dict keys do not change.
        if embed_dim:
            self.embed_head = nn.Conv2d(chans[0], embed_dim, 1)

    @property
    def required_multiple(self) -> int:
        """Input height and width must be multiples of this."""
        return 2 ** (self.config["levels"] - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return per-pixel class logits then embedding, (N, num_classes + embed_dim, H, W)."""
        check_input_size(x, self.required_multiple)
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, dec in zip(self.ups, self.decoders):
            x = dec(torch.cat([skips.pop(), up(x)], dim=1))
        if self.embed_dim:
            return torch.cat([self.head(x), self.embed_head(x)], dim=1)
        return self.head(x)
