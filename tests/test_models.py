"""UNet, registry and checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pathseg.errors import InputError
from pathseg.models import ModelConfig, UNet, create_model, list_architectures, load_model, save_model


def test_registry_builds_unet_by_name():
    net = create_model("unet", in_channels=3, num_classes=3, width=4, levels=3)
    assert isinstance(net, UNet)
    assert "unet" in list_architectures()
    with pytest.raises(KeyError, match="unknown architecture"):
        create_model("nope")


@pytest.mark.parametrize("levels", [2, 5])
def test_unet_shapes_and_levels(levels):
    net = UNet(in_channels=3, num_classes=3, width=4, levels=levels).eval()
    m = net.required_multiple
    assert m == 2 ** (levels - 1)
    x = torch.randn(2, 3, 2 * m, 3 * m)
    assert net(x).shape == (2, 3, 2 * m, 3 * m)
    # Five levels: four poolings, deepest features have width * 16 channels.
    if levels == 5:
        assert net.encoders[-1][0].out_channels == 4 * 16


def test_unet_rejects_bad_size_with_the_padded_shape():
    net = UNet(width=4, levels=3)
    with pytest.raises(ValueError, match=r"pad it to \(12, 8\)"):
        net(torch.randn(1, 3, 10, 7))


def test_bn_follows_relu():
    block = UNet(width=4, levels=2).encoders[0]
    kinds = [type(m).__name__ for m in block]
    assert kinds[:3] == ["Conv2d", "ReLU", "BatchNorm2d"]


def test_unet_overfits_a_tiny_batch():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    y = (x[:, 0] > 0).long()  # a per-pixel rule the net must learn
    net = UNet(width=8, levels=3, num_classes=2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    acc = (net(x).argmax(1) == y).float().mean().item()
    assert loss.item() < 0.2 and acc > 0.95


def test_checkpoint_round_trip(tmp_path):
    net = UNet(width=4, levels=3).eval()
    cfg = ModelConfig(arch="unet", arch_kwargs=net.config, mpp=0.5)
    save_model(tmp_path / "m", net, cfg)
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["pathseg_version"] and meta["torch_version"] and meta["mpp"] == 0.5
    lm = load_model(tmp_path / "m")
    x = torch.randn(1, 3, 16, 16)
    # channels_last (set on load) reorders the sums: equal up to float rounding.
    torch.testing.assert_close(lm.net(x), net(x), rtol=1e-4, atol=1e-5)
    assert len(lm.sha256) == 64
    # A run folder (with model/ inside) and the weights file itself also resolve.
    save_model(tmp_path / "run" / "model", net, cfg)
    assert load_model(tmp_path / "run").config.mpp == 0.5
    assert load_model(tmp_path / "m" / "model.safetensors").name == "m"


def test_load_model_errors_are_user_errors(tmp_path):
    with pytest.raises(InputError, match="not a built-in model"):
        load_model(tmp_path / "missing")
    net = UNet(width=4, levels=3)
    save_model(tmp_path / "m", net, ModelConfig(arch_kwargs=net.config))
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match="cannot read weights"):
        load_model(tmp_path / "m")


def test_half_precision_storage_loads_as_float(tmp_path):
    net = UNet(width=4, levels=3).eval()
    save_model(tmp_path / "h", net, ModelConfig(arch_kwargs=net.config), half=True)
    lm = load_model(tmp_path / "h")
    assert all(p.dtype == torch.float32 for p in lm.net.parameters())
    x = torch.randn(1, 3, 16, 16)
    np.testing.assert_allclose(lm.net(x).detach().numpy(), net(x).detach().numpy(), atol=5e-2)
