"""UNet / SegNet / DeepLab v3 for TAM segmentation: shapes, embeddings, unpooling, training, checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from pathseg.models import DeepLabV3, SegNet, UNet, create_model, list_architectures, load_model, save_model
from pathseg.models.checkpoint import ModelConfig, list_builtin

# Small but complete variants: every code path of the defaults, a fraction of the compute.
SMALL = {
    "unet": {"width": 4, "levels": 3},
    "segnet": {"width": 4, "depth": 3},
    "deeplabv3": {"width_mult": 0.35, "aspp_channels": 16},
}
CLASSES = {"unet": UNet, "segnet": SegNet, "deeplabv3": DeepLabV3}


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("in_channels", [1, 3, 5])
@pytest.mark.parametrize("embed_dim", [0, 8])
def test_forward_shape_any_channels_with_and_without_embedding(name, in_channels, embed_dim):
    torch.manual_seed(0)
    net = create_model(name, in_channels=in_channels, num_classes=2, embed_dim=embed_dim, **SMALL[name]).eval()
    assert isinstance(net, CLASSES[name]) and name in list_architectures()
    assert (net.num_classes, net.embed_dim) == (2, embed_dim)
    m = net.required_multiple
    x = torch.randn(2, in_channels, 2 * m, 3 * m)
    with torch.no_grad():
        out = net(x)
    assert out.shape == (2, 2 + embed_dim, 2 * m, 3 * m)
    assert torch.isfinite(out).all()
    # The config is plain JSON and rebuilds the same architecture.
    again = create_model(name, **json.loads(json.dumps(net.config)))
    assert list(again.state_dict()) == list(net.state_dict())
    with pytest.raises(ValueError, match="not a multiple"):
        net(torch.randn(1, in_channels, 2 * m + 1, 2 * m))


def test_required_multiples():
    assert UNet(levels=5).required_multiple == 16
    assert SegNet(depth=5).required_multiple == 32 and SegNet(depth=4).required_multiple == 16
    assert DeepLabV3(output_stride=8).required_multiple == 8
    assert DeepLabV3(output_stride=16).required_multiple == 16


def test_unet_without_embedding_keeps_its_keys_and_config():
    keys = set(UNet(width=4, levels=3).state_dict())
    with_embed = UNet(width=4, levels=3, embed_dim=3)
    assert set(with_embed.state_dict()) - keys == {"embed_head.weight", "embed_head.bias"}
    assert "embed_dim" not in UNet().config and with_embed.config["embed_dim"] == 3


def test_shipped_nuclei_model_still_loads():
    if "nuclei-he" not in list_builtin():
        pytest.skip("built-in weights not installed")
    lm = load_model("nuclei-he")
    stored = load_file(str(lm.path / "model.safetensors"))
    assert set(lm.net.state_dict()) == set(stored)
    assert lm.net.embed_dim == 0 and lm.net.num_classes == 3
    with torch.no_grad():
        assert lm.net(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def _identity_(conv: nn.Conv2d) -> None:
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, conv.kernel_size[0] // 2, conv.kernel_size[1] // 2] = 1.0


def test_segnet_unpools_at_the_stored_max_positions():
    # A one-channel, one-stage SegNet whose convolutions, BN and head are identities: its output
    # is the input max-pooled and put back at each 2x2 window's argmax, zeros elsewhere.
    net = SegNet(in_channels=1, num_classes=1, width=1, depth=1, convs=(1,)).eval()
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            _identity_(m)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    x = torch.rand(1, 1, 8, 8) + 0.1  # positive: ReLU keeps it
    with torch.no_grad():
        out = net(x)[0, 0].numpy()
    blocks = x[0, 0].numpy().reshape(4, 2, 4, 2).transpose(0, 2, 1, 3).reshape(4, 4, 4)
    expected = np.zeros((4, 4, 4), np.float32)
    arg = blocks.argmax(-1)
    np.put_along_axis(expected, arg[..., None], np.take_along_axis(blocks, arg[..., None], -1), -1)
    expected = expected.reshape(4, 4, 2, 2).transpose(0, 2, 1, 3).reshape(8, 8)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-6)
    assert (out > 0).sum() == 16  # exactly one non-zero per window


def test_segnet_decoder_mirrors_the_vgg_encoder():
    net = SegNet(width=64, depth=5)
    convs = [m for m in net.encoders.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64] * 2 + [128] * 2 + [256] * 3 + [512] * 6  # VGG16's 13
    dec = [m for m in net.decoders.modules() if isinstance(m, nn.Conv2d)]
    assert len(dec) == 13 and dec[-1].out_channels == 64


@pytest.mark.parametrize("size", [224, 232, 256, 512])
def test_deeplab_sizes_and_output_stride(size):
    net = DeepLabV3(in_channels=3, num_classes=2, embed_dim=4, **SMALL["deeplabv3"]).eval()
    with torch.no_grad():
        x = torch.randn(1, 3, size, size)
        assert net.backbone(x).shape[-2:] == (size // 8, size // 8)
        assert net(x).shape == (1, 6, size, size)


def test_deeplab_output_stride_16_uses_dilation_and_paper_rates():
    net = DeepLabV3(output_stride=16, **SMALL["deeplabv3"]).eval()
    with torch.no_grad():
        assert net.backbone(torch.randn(1, 3, 64, 64)).shape[-2:] == (4, 4)
    dilations = [m.dilation[0] for m in net.backbone.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert dilations[-4:] == [1, 2, 2, 2]  # last stride-2 block kept rate 1, later blocks rate 2
    rates = [m.dilation[0] for m in net.head[0].branches.modules() if isinstance(m, nn.Conv2d)]
    assert rates == [1, 6, 12, 18]
    rates8 = [m.dilation[0] for m in DeepLabV3().head[0].branches.modules() if isinstance(m, nn.Conv2d)]
    assert rates8 == [1, 12, 24, 36]


def test_deeplab_embedding_has_its_own_decoder():
    torch.manual_seed(0)
    net = DeepLabV3(num_classes=2, embed_dim=3, **SMALL["deeplabv3"]).train()
    assert set(dict(net.named_children())) == {"backbone", "head", "embed_head"}
    out = net(torch.randn(2, 3, 32, 32))
    out[:, 2:].square().mean().backward()  # a loss on the embedding only
    assert all(p.grad is None or not p.grad.any() for p in net.head.parameters())
    assert all(p.grad is not None and p.grad.any() for p in net.embed_head[0].parameters())
    assert net.backbone.features[0][0].weight.grad.any()


def _discs(n: int = 2, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    ys = []
    for i in range(n):
        cy, cx, r = 28 + 8 * i, 34 - 6 * i, 14 + 3 * i
        ys.append(((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).long())
    y = torch.stack(ys)
    x = y[:, None].float().expand(-1, 3, -1, -1) + 0.3 * torch.randn(n, 3, size, size, generator=g)
    return x, y


@pytest.mark.parametrize("name", sorted(SMALL))
def test_overfits_a_tiny_batch(name):
    torch.manual_seed(0)
    x, y = _discs()
    net = create_model(name, in_channels=3, num_classes=2, **SMALL[name])
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(30):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # 30 steps at a high rate leave BN running averages behind the weights (DeepLab: 0.82 eval
    # accuracy vs 0.985 in train mode); re-estimate them on the batch, then judge in eval mode.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        net(x)
        net.eval()
        acc = (net(x).argmax(1) == y).float().mean().item()
    assert acc > 0.95, (name, loss.item(), acc)


@pytest.mark.parametrize("name", ["segnet", "deeplabv3"])
def test_checkpoint_round_trip_with_embedding(tmp_path, name):
    net = create_model(name, in_channels=3, num_classes=2, embed_dim=4, **SMALL[name]).eval()
    save_model(tmp_path / name, net, ModelConfig(arch=name, arch_kwargs=net.config, classes=["background", "TAM"]))
    lm = load_model(tmp_path / name)  # channels_last on load: unpooling indices must still land right
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(lm.net(x), net(x), rtol=1e-4, atol=1e-4)
    assert lm.net.embed_dim == 4
