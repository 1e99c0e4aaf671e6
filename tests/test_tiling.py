"""Sliding-window inference and stitching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from pathseg.tiling import InferenceOptions, predict_probs, window_grid


class LocalNet(nn.Module):
    """A 5x5-receptive-field net: windowed output must equal whole-image output exactly."""

    required_multiple = 1

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _whole(net, image, mean, std):
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    x = (x - torch.tensor(mean).view(1, 3, 1, 1) * 255) / (torch.tensor(std).view(1, 3, 1, 1) * 255)
    # Reflect padding matches what the tiler does at the image border.
    x = nn.functional.pad(x, (8, 8, 8, 8), mode="reflect")
    with torch.no_grad():
        return torch.softmax(net(x), 1)[0, :, 8:-8, 8:-8].numpy()


@pytest.mark.parametrize("shape", [(100, 70), (33, 129), (64, 64)])
@pytest.mark.parametrize("window,halo,batch", [(32, 8, 3), (48, 8, 1)])
def test_windows_reproduce_whole_image(shape, window, halo, batch):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
    net = LocalNet().eval()
    mean, std = [0.5] * 3, [0.25] * 3
    got = predict_probs(net, image, mean, std, InferenceOptions(window=window, halo=halo, batch_size=batch))
    assert got.shape == (3,) + shape
    np.testing.assert_allclose(got, _whole(net, image, mean, std), atol=1e-5)


def test_window_grid_covers_the_image():
    starts = window_grid(1000, 256, 64)
    assert starts[0] == 0 and starts[1] == 128 and starts[-1] + 128 >= 1000 and starts[-1] < 1000


def test_options_validate():
    with pytest.raises(ValueError):
        InferenceOptions(window=128, halo=64)
    with pytest.raises(ValueError):
        InferenceOptions(batch_size=0)


def test_progress_counts_every_window():
    seen = []
    net = LocalNet().eval()
    predict_probs(net, np.zeros((50, 50, 3), np.uint8), [0.5] * 3, [0.25] * 3,
                  InferenceOptions(window=32, halo=8, batch_size=2), progress=seen.append)
    assert sum(seen) == len(window_grid(50, 32, 8)) ** 2


def test_tta_is_the_mean_over_flips():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    net = LocalNet().eval()
    mean, std = [0.5] * 3, [0.25] * 3
    got = predict_probs(net, image, mean, std, InferenceOptions(window=32, halo=8, batch_size=2, tta=True))
    expected = np.mean([
        _whole(net, np.ascontiguousarray(image[::sy, ::sx]), mean, std)[:, ::sy, ::sx]
        for sy in (1, -1) for sx in (1, -1)
    ], axis=0)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    plain = predict_probs(net, image, mean, std, InferenceOptions(window=32, halo=8, batch_size=2))
    assert np.abs(got - plain).max() > 1e-3  # the flips do change the answer of a non-symmetric net
