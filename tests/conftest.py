"""Shared fixtures: synthetic H&E-like images with exact instance labels, and the shared data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def synthetic_nuclei(size: int = 128, n: int = 12, seed: int = 0, radius: tuple[int, int] = (5, 9)) -> tuple[np.ndarray, np.ndarray]:
    """An H&E-like RGB image of purple disks on pink stroma, and its instance map."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.int32)
    k = 0
    for _ in range(n * 10):
        if k == n:
            break
        r = int(rng.integers(*radius))
        cy, cx = rng.integers(r, size - r, size=2)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if labels[disk].any():
            continue
        k += 1
        labels[disk] = k
    image = np.empty((size, size, 3), np.float64)
    image[:] = (235, 160, 200)  # eosin pink
    image[labels > 0] = (90, 50, 150)  # haematoxylin purple
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def write_dataset(root: Path, n_images: int = 2, size: int = 128, seed: int = 0) -> Path:
    """A dataset folder (images/ + 16-bit labels/) of synthetic nuclei images."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n_images):
        img, lab = synthetic_nuclei(size, seed=seed + i)
        Image.fromarray(img).save(root / "images" / f"img{i}.png")
        Image.fromarray(lab.astype(np.uint16)).save(root / "labels" / f"img{i}.png")
    return root


@pytest.fixture
def synthetic_dataset(tmp_path: Path) -> Path:
    """Two 128x128 synthetic images with labels."""
    return write_dataset(tmp_path / "ds")


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or skip the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not available")
    return SHARED_DATA


@pytest.fixture
def one_thread():
    """One torch thread for tests on tiny tensors: with 2 threads on a busy 2-core machine every op
    pays for spinning threads (about 10x slower here); training with threads=1 sets this globally too."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
