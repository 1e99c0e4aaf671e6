"""TAM datasets: synthetic CD163 IHC with exact macrophage instances, and grouped 70/15/15 splits."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.measure import label as measure_label
from skimage.segmentation import expand_labels
from skimage.transform import rescale

from pathseg.errors import InputError, OutputError
from pathseg.instances import relabel_sequential
from pathseg.io.write import atomic_open, write_label_map

log = logging.getLogger(__name__)

SCENE = "cd163-tam-clusters"
SPLITS = ("train", "val", "test")
# Seeds of the three splits lie in disjoint ranges, so no test image is ever trained on.
SPLIT_SEEDS = {"train": 0, "val": 1_000_000, "test": 2_000_000}
DEFAULT_COUNTS = {"train": 160, "val": 24, "test": 32}
# The scene is drawn at 0.5 µm/px; doubling it gives 0.25 µm/px, where a 224-px patch holds a
# few TAMs, close to what the paper's 224-px patches at 60x hold.
DEFAULT_UPSCALE = 2
DATA_VERSION = 2


def macrophage_labels(instances: np.ndarray, table: Sequence[dict], category: str = "macrophage",
                      min_fragment_px: int = 30) -> np.ndarray:
    """Instance map of one category: child objects (nuclei) join their parent, tiny fragments their neighbour."""
    ids = {int(r["id"]) for r in table if r["category"] == category}
    lut = np.zeros(int(instances.max(initial=0)) + 1, np.int32)
    for r in table:
        i, parent = int(r["id"]), r.get("parent")
        if i >= len(lut):
            continue
        if i in ids:
            lut[i] = i
        elif parent not in (None, "", 0) and int(parent) in ids:
            lut[i] = int(parent)  # a TAM's own nucleus is part of the TAM
    labels = lut[instances]
    fg = labels > 0
    # A TAM partly covered by another can show as several pieces: slivers are not cells an
    # annotator would trace, so a piece below min_fragment_px goes to the TAM it touches.
    pieces = measure_label(labels, background=0, connectivity=1)  # regions of equal id
    sizes = np.bincount(pieces.ravel())
    small = sizes < min_fragment_px
    small[0] = False
    if small.any():
        grown = np.where(small[pieces], 0, labels)
        # Grow one pixel at a time inside the foreground, so a piece only goes to a TAM it touches.
        for _ in range(min_fragment_px):
            hole = fg & (grown == 0)
            step = np.where(hole, expand_labels(grown, distance=1), grown)
            if np.array_equal(step, grown):
                break
            grown = step
        # A small piece that touches no other TAM (an isolated small cell) keeps its own id.
        labels = np.where(fg & (grown == 0), labels, grown).astype(np.int32)
    return relabel_sequential(labels)


def synthetic_tam(scene, seed: int, size: tuple[int, int], upscale: int = DEFAULT_UPSCALE) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic CD163 image (uint8 RGB) and its TAM instance map at `upscale` x the scene's resolution."""
    from pathseg.synth import generate

    s = generate(scene, int(seed), size)
    rgb = np.round(np.clip(s.u0, 0, 1) * 255).astype(np.uint8)
    return upscale_pair(rgb, macrophage_labels(s.instances, s.table), upscale)


def upscale_pair(rgb: np.ndarray, labels: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Image (bilinear) and instance map (nearest) at `factor` x the resolution; the stored 8-bit image is the input."""
    if factor <= 1:
        return rgb, labels.astype(np.int32)
    up = rescale(rgb.astype(np.float32) / 255, factor, order=1, channel_axis=-1, anti_aliasing=False)
    return np.round(up * 255).astype(np.uint8), np.repeat(np.repeat(labels, factor, 0), factor, 1).astype(np.int32)


def upscale_dataset(src: str | Path, dst: str | Path, factor: int = DEFAULT_UPSCALE) -> Path:
    """Copy a synthetic TAM dataset written with upscale=1 at `factor` x resolution (same as writing it upscaled)."""
    from pathseg.io import read_image, read_label

    src, dst = Path(src), Path(dst)
    config = json.loads((src / "dataset.json").read_text())
    if config.get("upscale") != 1:
        raise InputError(f"{src}: not a native-resolution TAM dataset (upscale {config.get('upscale')})")
    config.update(upscale=factor, mpp=config["mpp"] / factor)
    for split in SPLITS:
        (dst / split / "images").mkdir(parents=True, exist_ok=True)
        (dst / split / "labels").mkdir(parents=True, exist_ok=True)
        for img in sorted((src / split / "images").glob("*.png")):
            rgb, labels = upscale_pair(read_image(img)[0], read_label(src / split / "labels" / img.name), factor)
            _write_pair(dst / split, img.stem, rgb, labels, config["mpp"])
    (dst / "dataset.json").write_text(json.dumps(config, indent=2) + "\n")
    return dst


def _write_pair(folder: Path, name: str, rgb: np.ndarray, labels: np.ndarray, mpp: float) -> None:
    write_label_map(folder / "labels" / f"{name}.png", labels)
    with atomic_open(folder / "images" / f"{name}.png") as fh:  # the image last: the pair is complete
        Image.fromarray(rgb).save(fh, format="PNG", dpi=(25400 / mpp, 25400 / mpp))


def write_synthetic_tam(out: str | Path, counts: dict[str, int] | None = None, size: int = 256,
                        upscale: int = DEFAULT_UPSCALE, seed: int = 0, overwrite: bool = False,
                        progress: Callable[[int], None] | None = None) -> Path:
    """Write train/val/test folders of synthetic CD163 images and TAM labels; resumes an identical dataset."""
    from pathseg.synth import load_scene

    out = Path(out)
    scene = load_scene(SCENE)
    counts = dict(DEFAULT_COUNTS if counts is None else counts)
    mpp = float(scene.mpp) / upscale
    config = {"scene": SCENE, "scene_sha256": hashlib.sha256(scene.text.encode()).hexdigest(), "counts": counts,
              "size": size, "upscale": upscale, "seed": seed, "mpp": mpp, "version": DATA_VERSION,
              "split_seeds": SPLIT_SEEDS}
    meta = out / "dataset.json"
    if meta.is_file():
        old = json.loads(meta.read_text())
        if old != config and not overwrite:
            raise OutputError(f"{out}: holds a TAM dataset made with other settings (dataset.json); choose a new folder")
    elif out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()) and not overwrite:
        raise OutputError(f"{out}: folder is not empty; choose a new folder or pass --overwrite")
    try:
        for split in SPLITS:
            (out / split / "images").mkdir(parents=True, exist_ok=True)
            (out / split / "labels").mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps(config, indent=2) + "\n")
    except OSError as e:
        raise OutputError(f"{out}: cannot write ({e.strerror})") from None
    for split in SPLITS:
        for i in range(counts.get(split, 0)):
            name = f"{split}_{i:04d}"
            img_path = out / split / "images" / f"{name}.png"
            if img_path.is_file():  # written last: the pair is complete
                continue
            rgb, labels = synthetic_tam(scene, seed + SPLIT_SEEDS[split] + i, (size, size), upscale)
            _write_pair(out / split, name, rgb, labels, mpp)
            if progress is not None:
                progress(1)
    return out


def group_split(names: Sequence[str], groups: dict[str, str] | None = None,
                fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0) -> dict[str, list[str]]:
    """Split names into train/val/test by group (patient or slide): no group spans two splits."""
    if not names:
        raise InputError("no images to split")
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise InputError(f"split fractions {fractions} must be >= 0 and sum to 1")
    if groups:
        missing = [n for n in names if n not in groups]
        if missing:  # an image without a group would silently become a patient of its own
            raise InputError(f"groups file names no group for {len(missing)} image(s), e.g. {', '.join(missing[:3])}")
    groups = groups or {}
    by_group: dict[str, list[str]] = {}
    for n in sorted(names):
        by_group.setdefault(groups.get(n, n), []).append(n)
    keys = sorted(by_group)
    order = np.random.default_rng(seed).permutation(len(keys))
    total = len(names)
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    # Fill test, then val, up to their share of images; everything else is training data.
    targets = {"test": fractions[2] * total, "val": fractions[1] * total}
    for k in order:
        g = by_group[keys[k]]
        for split in ("test", "val"):
            if len(out[split]) + len(g) / 2 <= targets[split] and len(keys) > 2:
                out[split] += g
                break
        else:
            out["train"] += g
    if not out["train"]:
        raise InputError(f"{len(keys)} groups are too few for a train/val/test split")
    return {s: sorted(v) for s, v in out.items()}


def read_groups(path: str | Path) -> dict[str, str]:
    """Read a two-column CSV (image name, group) mapping images to patients or slides."""
    import csv

    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise InputError(f"{path}: cannot read groups file ({e.strerror})") from None
    out = {}
    for i, row in enumerate(rows, 1):
        if not row or row[0].startswith("#") or (i == 1 and row[0].strip().lower() in ("name", "image")):
            continue
        if len(row) < 2:
            raise InputError(f"{path}:{i}: expected 'image,group', got {','.join(row)!r}")
        out[Path(row[0].strip()).stem] = row[1].strip()
    return out
