"""Training/evaluation datasets: ``DIR/images/<name>.<ext>`` paired with ``DIR/labels/<name>.png``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from pathseg.errors import InputError, PathsegError
from pathseg.io.read import IMAGE_SUFFIXES, open_pillow

__all__ = ["LABEL_SUFFIXES", "Sample", "check_pair", "list_samples", "read_label"]

log = logging.getLogger(__name__)

# Preferred first: the documented layout uses PNG labels.
LABEL_SUFFIXES = (".png", ".tif", ".tiff")


@dataclass(frozen=True)
class Sample:
    """One image of a dataset and its instance label map (None when unlabelled)."""

    name: str
    image: Path
    label: Path | None


def list_samples(root: str | Path, require_labels: bool = True) -> list[Sample]:
    """List the samples of a dataset folder, sorted by name."""
    root = Path(root)
    images_dir = root / "images"
    labels_dir = root / "labels"
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found")
    if not images_dir.is_dir():
        raise InputError(f"{root}: no images/ folder (expected {images_dir}/<name>.png and {labels_dir}/<name>.png)")
    by_name: dict[str, Path] = {}
    for path in sorted(images_dir.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in by_name:
            raise InputError(f"{images_dir}: two images named {path.stem!r} ({by_name[path.stem].name}, {path.name})")
        by_name[path.stem] = path
    if not by_name:
        raise InputError(f"{images_dir}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    if require_labels and not labels_dir.is_dir():
        raise InputError(f"{root}: no labels/ folder (expected {labels_dir}/<name>.png for each image)")

    samples: list[Sample] = []
    missing: list[str] = []
    for name in sorted(by_name):
        label = _find_label(labels_dir, name)
        if label is None:
            missing.append(name)
        samples.append(Sample(name=name, image=by_name[name], label=label))
    if missing and require_labels:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InputError(f"{labels_dir}: no label map for {len(missing)} image(s): {shown}")
    if missing:
        log.info("%s: %d of %d images have no label map", root, len(missing), len(samples))
    return samples


def _find_label(labels_dir: Path, name: str) -> Path | None:
    for suffix in LABEL_SUFFIXES:
        candidate = labels_dir / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def read_label(path: str | Path) -> np.ndarray:
    """Read an instance label map (0 = background, 1..N = objects) as an int32 array."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: label file not found")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            array = tifffile.imread(path, key=0)
        else:
            array = _read_label_pillow(path)
    except PathsegError:
        raise
    except Exception as exc:  # decoders raise many types (OSError, ValueError, zlib.error, ...)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{path}: cannot read label map ({reason})") from exc

    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise InputError(
            f"{path}: label map has shape {tuple(array.shape)}; expected a single-channel "
            "instance map (0 = background, 1..N = one id per object), not an RGB picture"
        )
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise InputError(f"{path}: label map has non-integer values; expected instance ids")
    elif array.dtype.kind not in "iu":
        raise InputError(f"{path}: unsupported label pixel type {array.dtype}")
    if array.size and array.min() < 0:
        raise InputError(f"{path}: label map has negative values; expected 0 = background, 1..N")
    if array.size and array.max() > np.iinfo(np.int32).max:
        raise InputError(f"{path}: label ids exceed the int32 range")
    return array.astype(np.int32, copy=False)


def _read_label_pillow(path: Path) -> np.ndarray:
    with open_pillow(path) as im:
        if im.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LA", "PA"):
            raise InputError(
                f"{path}: {im.mode} label image; labels must be a single-channel instance map "
                "(0 = background, 1..N = one id per object), not a coloured picture"
            )
        im.load()
        # "P" (palette) label maps store the ids as palette indices; keep the indices.
        return np.asarray(im)


def check_pair(image: np.ndarray, label: np.ndarray, name: str) -> None:
    """Raise InputError if an image and its label map differ in height or width."""
    if tuple(image.shape[:2]) != tuple(label.shape[:2]):
        raise InputError(
            f"{name}: image is {image.shape[1]} x {image.shape[0]} px but its label map is "
            f"{label.shape[1]} x {label.shape[0]} px"
        )
