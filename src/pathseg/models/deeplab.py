"""DeepLab v3 (Chen et al. 2017) on a MobileNet-v2 backbone (Sandler et al. 2018), in plain torch.

torchvision has both pieces, but it cannot be installed beside the local torch 2.13 build used
here (no matching wheel), so the backbone, ASPP and head are written out below.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pathseg.models._registry import register_model
from pathseg.models.unet import check_input_size

# MobileNet-v2 inverted residual stages: (expansion t, channels c, repeats n, first stride s).
MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
# ASPP atrous rates per output stride (DeepLab v3 paper: (6, 12, 18) at 16, doubled at 8).
ASPP_RATES = {8: (12, 24, 36), 16: (6, 12, 18)}


def _divisible(v: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of `divisor`, never below 90% of `v` (MobileNet rule)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def _conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, dilation: int = 1, groups: int = 1,
             act: type[nn.Module] | None = nn.ReLU6) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, padding=dilation * (k - 1) // 2, dilation=dilation,
                                         groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNet-v2 block: 1x1 expansion, 3x3 depthwise (strided or dilated), linear 1x1 projection."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, dilation: int = 1) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [] if expand == 1 else [_conv_bn(cin, hidden)]
        layers += [_conv_bn(hidden, hidden, 3, stride, dilation, groups=hidden), _conv_bn(hidden, cout, act=None)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block output, plus the input when shapes match."""
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNet-v2 feature extractor (no final 1x1 1280 conv, as in DeepLab) at output stride 8, 16 or 32.

    Strides beyond `output_stride` become dilations: the block that would have strided keeps the
    previous rate and every later block uses the rate multiplied by that stride (DeepLab's rule).
    """

    def __init__(self, in_channels: int = 3, output_stride: int = 8, width_mult: float = 1.0) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        cin = _divisible(32 * width_mult)
        layers: list[nn.Module] = [_conv_bn(in_channels, cin, 3, stride=2)]
        current, rate = 2, 1
        for t, c, n, s in MOBILENET_V2:
            cout = _divisible(c * width_mult)
            for i in range(n):
                stride, dilation = (s if i == 0 else 1), rate
                if stride > 1 and current >= output_stride:
                    stride, rate = 1, rate * s
                elif stride > 1:
                    current *= stride
                layers.append(InvertedResidual(cin, cout, stride, t, dilation))
                cin = cout
        self.features = nn.Sequential(*layers)
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features (N, out_channels, H / output_stride, W / output_stride)."""
        return self.features(x)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1 conv, three atrous 3x3 convs and image pooling, concatenated and projected."""

    def __init__(self, cin: int, cout: int, rates: tuple[int, ...], dropout: float = 0.1,
                 image_pooling: bool = True) -> None:
        super().__init__()
        relu = nn.ReLU
        self.branches = nn.ModuleList([_conv_bn(cin, cout, act=relu)]
                                      + [_conv_bn(cin, cout, 3, dilation=r, act=relu) for r in rates])
        # Batch statistics over (N, C, 1, 1): in training this branch needs a batch of 2 or more.
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv_bn(cin, cout, act=relu)) if image_pooling else None
        n = len(rates) + 1 + int(image_pooling)
        self.project = nn.Sequential(_conv_bn(cout * n, cout, act=relu), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-rate context features (N, cout, h, w)."""
        outs = [b(x) for b in self.branches]
        if self.pool is not None:
            outs.append(self.pool(x).expand(-1, -1, *x.shape[-2:]))
        return self.project(torch.cat(outs, dim=1))


class DeepLabHead(nn.Sequential):
    """ASPP -> 3x3 conv-BN-ReLU -> 1x1 classifier: the DeepLab v3 decoder."""

    def __init__(self, cin: int, channels: int, cout: int, rates: tuple[int, ...], image_pooling: bool = True) -> None:
        super().__init__(ASPP(cin, channels, rates, image_pooling=image_pooling), _conv_bn(channels, channels, 3, act=nn.ReLU),
                         nn.Conv2d(channels, cout, 1))


@register_model("deeplabv3")
class DeepLabV3(nn.Module):
    """DeepLab v3 with a MobileNet-v2 backbone; logits are bilinearly upsampled to the input size.

    ``embed_dim > 0`` adds a second, independent :class:`DeepLabHead` (ASPP included) that outputs
    the raw pixel embedding after the class logits: the paper's "whole decoder duplicated" (2.5.2).
    ``aspp_channels`` is 256 in DeepLab v3; 128 by default keeps CPU training affordable.
    Inputs must be multiples of ``output_stride``. ``atrous_rates`` (default: the paper's for the
    output stride) and ``image_pooling`` can be set for sliding-window use: the image-pooling
    branch averages over the whole input, so its output depends on the inference window.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 2, embed_dim: int = 0, output_stride: int = 8,
                 width_mult: float = 1.0, aspp_channels: int = 128, atrous_rates: list[int] | None = None,
                 image_pooling: bool = True) -> None:
        super().__init__()
        if output_stride not in ASPP_RATES:
            raise ValueError(f"output_stride must be one of {sorted(ASPP_RATES)}, got {output_stride}")
        if embed_dim < 0:
            raise ValueError(f"embed_dim must be >= 0, got {embed_dim}")
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "embed_dim": embed_dim,
                       "output_stride": output_stride, "width_mult": width_mult, "aspp_channels": aspp_channels}
        if atrous_rates is not None or not image_pooling:  # only then: older configs stay as they were
            self.config.update(atrous_rates=list(atrous_rates or ASPP_RATES[output_stride]), image_pooling=image_pooling)
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.backbone = MobileNetV2(in_channels, output_stride, width_mult)
        rates = tuple(atrous_rates) if atrous_rates is not None else ASPP_RATES[output_stride]
        self.head = DeepLabHead(self.backbone.out_channels, aspp_channels, num_classes, rates, image_pooling)
        if embed_dim:
            self.embed_head = DeepLabHead(self.backbone.out_channels, aspp_channels, embed_dim, rates, image_pooling)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def required_multiple(self) -> int:
        """Input height and width must be multiples of this."""
        return self.config["output_stride"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return per-pixel class logits then embedding, (N, num_classes + embed_dim, H, W)."""
        check_input_size(x, self.required_multiple)
        size = x.shape[-2:]
        f = self.backbone(x)
        out = self.head(f)
        if self.embed_dim:
            out = torch.cat([out, self.embed_head(f)], dim=1)
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False)
