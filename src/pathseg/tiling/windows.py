"""Sliding-window inference: fixed-size windows, batched, central part of each kept.

Every window is ``window`` px square and keeps its central ``window - 2*halo`` px, so
each output pixel comes from a window where it has at least ``halo`` px of real context
(the paper's scheme is window 256, halo 64: stride 128, central 128 kept). Windows have a
fixed shape, so batches are uniform and torch.compile / cuDNN never see a new shape.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn as nn


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class InferenceOptions:
    """How to run a network over an image."""

    window: int = 512
    halo: int = 64
    batch_size: int = 4
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    precision: str = "auto"  # "auto" (bf16 on CUDA, fp32 on CPU), "fp32", "bf16", "fp16"
    multiple: int = 1  # the window must be a multiple of this (the network's total stride)
    tta: bool = False  # average the softmax over the 4 flips of each window (4x the compute)

    def __post_init__(self) -> None:
        if self.halo < 0:
            raise ValueError(f"--halo {self.halo}: must be >= 0")
        if self.window <= 2 * self.halo:
            raise ValueError(f"--window {self.window}: must exceed twice the halo ({self.halo})")
        if self.window % self.multiple:
            raise ValueError(f"--window {self.window}: must be a multiple of {self.multiple} for this network")
        if self.batch_size < 1:
            raise ValueError("--batch-size must be >= 1")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision {self.precision}: choose from {', '.join(PRECISIONS)}")


def pick_device(name: str = "auto") -> torch.device:
    """Resolve "auto" to CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA GPU is available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) present")
    elif dev.type != "cpu":
        raise ValueError(f"--device {name}: use auto, cpu, cuda or cuda:N")
    return dev


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context for the requested precision on this device (no-op for fp32)."""
    if precision == "auto":
        # CPUs without AMX / AVX512-BF16 (e.g. the AMD EPYCs we test on) emulate bf16 about
        # 10x slower than fp32, so only CUDA gets reduced precision by default.
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)


def window_grid(length: int, window: int, halo: int) -> list[int]:
    """Start offsets (in the halo-padded frame) of windows whose cores tile [0, length)."""
    core = window - 2 * halo
    n = max(1, -(-length // core))
    return [i * core for i in range(n)]


def _windows(image: np.ndarray, window: int, halo: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    h, w = image.shape[:2]
    core = window - 2 * halo
    ys, xs = window_grid(h, window, halo), window_grid(w, window, halo)
    ph = ys[-1] + window - halo - h  # padding after the image so the last window fits
    pw = xs[-1] + window - halo - w
    # Reflection keeps texture statistics at the border (zeros would look like a dark
    # stain); numpy reflects repeatedly when a pad is wider than the image.
    padded = np.pad(image, ((halo, ph), (halo, pw), (0, 0)), mode="reflect")
    assert core > 0
    return padded, [(y, x) for y in ys for x in xs]


@torch.inference_mode()
def predict_probs(
    net: nn.Module,
    image: np.ndarray,
    mean: list[float],
    std: list[float],
    opts: InferenceOptions | None = None,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Class probabilities (C, H, W) float32 of an RGB uint8 image of any size."""
    opts = opts or InferenceOptions()
    dev = next(net.parameters()).device
    multiple = getattr(net, "required_multiple", 1)
    if opts.window % multiple:
        raise ValueError(f"window {opts.window} must be a multiple of {multiple} for this network")
    h, w = image.shape[:2]
    win, halo = opts.window, opts.halo
    core = win - 2 * halo
    padded, starts = _windows(image, win, halo)
    m = torch.tensor(mean, dtype=torch.float32, device=dev).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32, device=dev).view(1, 3, 1, 1) * 255.0
    out: np.ndarray | None = None
    for batch in _batches(starts, opts.batch_size):
        tiles = np.stack([padded[y : y + win, x : x + win] for y, x in batch])
        if len(batch) < opts.batch_size:  # pad the last batch: one shape for every call
            tiles = np.concatenate([tiles, np.repeat(tiles[-1:], opts.batch_size - len(batch), 0)])
        x = torch.from_numpy(tiles).to(dev).permute(0, 3, 1, 2).float()
        x = ((x - m) / s).contiguous(memory_format=torch.channels_last)
        with autocast_context(dev, opts.precision):
            prob = network_outputs(net, x, opts.tta)
        probs = prob[:, :, halo : halo + core, halo : halo + core].cpu().numpy()
        if out is None:
            out = np.zeros((probs.shape[1], h, w), np.float32)
        for p, (y, x0) in zip(probs, batch):
            hh, ww = min(core, h - y), min(core, w - x0)
            out[:, y : y + hh, x0 : x0 + ww] = p[:, :hh, :ww]
        if progress is not None:
            progress(len(batch))
    assert out is not None
    return out


def network_outputs(net: nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """Softmax class probabilities of a batch, followed by the raw embedding of instance-embedding nets."""
    e = int(getattr(net, "embed_dim", 0) or 0)

    def split(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        y = y.float()
        return (torch.softmax(y[:, :-e], 1), y[:, -e:]) if e else (torch.softmax(y, 1), None)

    prob, emb = split(net(x))
    if tta:
        # Flips are exact symmetries of a tissue image; averaging the softmax over them removes
        # orientation-dependent errors. Embeddings are not averaged: a cell's embedding need not
        # be the same under a flip (only its distance to other cells' embeddings is trained).
        for f in ((-1,), (-2,), (-2, -1)):
            prob = prob + split(net(x.flip(f)))[0].flip(f)
        prob = prob / 4
    return prob if emb is None else torch.cat([prob, emb], 1)


def _batches(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]
