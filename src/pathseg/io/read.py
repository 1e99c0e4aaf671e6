"""Read H&E images (PNG, JPEG, TIFF) as RGB uint8 arrays together with their pixel size."""

from __future__ import annotations

import glob
import logging
import math
import os
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from pathseg.errors import InputError, PathsegError

__all__ = ["IMAGE_SUFFIXES", "MAX_PIXELS", "MPP_RANGE", "list_images", "open_pillow", "read_image"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
# Beyond this a tile-based reader is needed: one RGB copy alone would take > 6 GiB.
MAX_PIXELS = 2**31
# Pixel sizes outside this range are "no real value" defaults (72/96 dpi, resolution 1)
# written by generic software, never a microscope calibration.
MPP_RANGE = (0.05, 20.0)

_TIFF_SUFFIXES = (".tif", ".tiff")
# Whole-slide formats (read by pathseg.io.slide); listed here so folders and globs find them.
WSI_SUFFIXES = (".svs", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".czi", ".dcm")
_PILLOW_LIMIT_LOCK = threading.Lock()
_GLOB_CHARS = re.compile(r"[*?\[]")
_MICRON_UNITS = {"micron": 1.0, "microns": 1.0, "um": 1.0, "µm": 1.0, "\u03bcm": 1.0,
                 "\\u00b5m": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4}


def read_image(path: str | Path, mpp: float | None = None) -> tuple[np.ndarray, float | None]:
    """Read an RGB brightfield image as an (H, W, 3) uint8 array and its pixel size in µm/px.

    RGBA images keep their colour where alpha is fully opaque everywhere; otherwise they
    are composited on a white background (transparent = empty glass). 16-bit RGB is
    scaled to 8 bit. Greyscale and other channel layouts are refused with InputError.
    The pixel size is the explicit ``mpp`` if given, else read from the file's metadata
    (TIFF resolution tags, ImageJ/OME/Aperio metadata, PNG/JPEG dpi), else None.
    """
    path = Path(path)
    if mpp is not None:
        try:
            value = float(mpp)
        except (TypeError, ValueError):
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"{path}: pixel size must be a positive number of µm/px, got {mpp!r}")
        mpp = value
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    try:
        if path.suffix.lower() in _TIFF_SUFFIXES:
            array, file_mpp = _read_tiff(path)
        else:
            array, file_mpp = _read_pillow(path)
    except PathsegError:
        raise
    except MemoryError as exc:
        raise InputError(f"{path}: not enough memory to read this image") from exc
    except Exception as exc:  # decoders raise many types (OSError, ValueError, zlib.error, ...)
        raise InputError(f"{path}: cannot read image ({_reason(exc)})") from exc
    rgb = _to_rgb8(array, path)
    return rgb, (mpp if mpp is not None else file_mpp)


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand files, folders (non-recursive) and glob patterns into a list of image paths."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    found: list[Path] = []
    for item in inputs:
        text = os.path.expanduser(str(item))
        path = Path(text)
        if path.is_dir():
            images = _images_in_folder(path)
            if not images:
                log.warning("no images (%s) in folder %s", ", ".join(IMAGE_SUFFIXES), path)
            found.extend(images)
        elif path.exists():
            found.append(path)
        elif _GLOB_CHARS.search(text):
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            matches = [m for m in matches if m.is_file() and _is_image_name(m)]
            if not matches:
                log.debug("no images match %s", text)
            found.extend(matches)
        else:
            # Kept so the caller can report it as a failed input instead of silently dropping it.
            found.append(path)
    unique: dict[str, Path] = {}
    for p in found:
        unique.setdefault(os.path.normcase(os.path.abspath(p)), p)
    return list(unique.values())


def _is_image_name(path: Path) -> bool:
    # Skip dot-files such as macOS "._name.png" resource forks copied onto USB drives.
    return path.suffix.lower() in IMAGE_SUFFIXES + WSI_SUFFIXES and not path.name.startswith(".")


def _images_in_folder(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and _is_image_name(p))


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _check_size(path: Path, height: int, width: int) -> None:
    if int(height) * int(width) > MAX_PIXELS:
        raise InputError(
            f"{path}: image is {width} x {height} px, too large to load at once; "
            "use the slide engine (tiled whole-slide processing) for it"
        )


def _plausible(mpp: float | None) -> float | None:
    if mpp is None or not math.isfinite(mpp) or not (MPP_RANGE[0] <= mpp <= MPP_RANGE[1]):
        return None
    return float(mpp)


def open_pillow(path: Path) -> Image.Image:
    """Open an image lazily with Pillow, applying MAX_PIXELS instead of Pillow's bomb limit."""
    # Pillow's decompression-bomb guard (~179 Mpx) is meant for untrusted web uploads; large
    # scans are legitimate here. The limit is a global, so swap it under a lock, and only
    # around open(), which is where Pillow checks it (decoding then runs unlocked).
    with _PILLOW_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            im = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    if im.width * im.height > MAX_PIXELS:
        im.close()
        _check_size(path, im.height, im.width)
    return im


def _read_pillow(path: Path) -> tuple[np.ndarray, float | None]:
    with open_pillow(path) as im:
        dpi = im.info.get("dpi")
        im.load()  # decode now so truncated files fail here
        array = np.asarray(_normalise_pillow_mode(im, path))
    mpp = None
    if dpi is not None:
        try:
            xdpi = float(dpi[0])
            mpp = _plausible(25400.0 / xdpi) if xdpi > 0 else None
        except (TypeError, ValueError, IndexError):
            mpp = None
    return array, mpp


def _normalise_pillow_mode(im: Image.Image, path: Path) -> Image.Image:
    mode = im.mode
    if mode in ("RGB", "RGBA"):
        return im
    if mode == "P":
        # Palette images: the palette decides whether it is colour or has transparency.
        has_alpha = "transparency" in im.info or im.palette is not None and im.palette.mode == "RGBA"
        return im.convert("RGBA" if has_alpha else "RGB")
    if mode == "PA":
        return im.convert("RGBA")
    if mode in ("1", "L", "LA", "La", "I", "F") or mode.startswith("I;"):
        raise InputError(f"{path}: greyscale image; pathseg needs an RGB brightfield image")
    if mode in ("YCbCr", "CMYK", "RGBX", "RGBa", "LAB", "HSV"):
        log.debug("%s: converting Pillow mode %s to RGB", path, mode)
        return im.convert("RGB")
    raise InputError(f"{path}: unsupported image mode {mode}; pathseg needs an RGB brightfield image")


def _read_tiff(path: Path) -> tuple[np.ndarray, float | None]:
    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise InputError(f"{path}: TIFF file contains no image")
        mpp = _tiff_mpp(tif)
        level = tif.series[0].levels[0]
        axes = level.axes
        shape = dict(zip(axes, level.shape))
        _check_size(path, shape.get("Y", 1), shape.get("X", 1))
        try:
            if any(a not in "YXSC" and n > 1 for a, n in shape.items()):
                # A stack (pages, z, time...): use the first plane, as viewers do.
                page = level.pages[0] if getattr(level, "pages", None) else tif.pages[0]
                array, axes = page.asarray(), page.axes
            else:
                array = level.asarray()
        except ValueError as exc:
            if "imagecodecs" not in str(exc):
                raise
            array = None  # e.g. LZW/JPEG TIFF without the optional imagecodecs package
    if array is None:
        log.debug("%s: tifffile lacks the codec, decoding with Pillow", path)
        array, _ = _read_pillow(path)
        return array, mpp
    return _move_channels_last(array, axes), mpp


def _move_channels_last(array: np.ndarray, axes: str) -> np.ndarray:
    keep = [i for i, a in enumerate(axes) if a in "YXSC" or array.shape[i] > 1]
    array = array.reshape([array.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    for ch in "SC":
        if ch in axes and axes.index(ch) != len(axes) - 1:
            # Planar (3, H, W) storage: put samples last.
            array = np.moveaxis(array, axes.index(ch), -1)
            axes = axes.replace(ch, "") + ch
    return array


def _tiff_mpp(tif: tifffile.TiffFile) -> float | None:
    page = tif.pages[0]
    tags = page.tags
    unit_tag = tags.get("ResolutionUnit")
    xres_tag = tags.get("XResolution")
    unit = int(unit_tag.value) if unit_tag is not None else 2  # TIFF default is inch
    xres = None
    if xres_tag is not None:
        value = xres_tag.value
        num, den = (value if isinstance(value, tuple) else (value, 1))
        xres = num / den if den else None
    if xres and xres > 0:
        per_unit = {2: 25400.0, 3: 1e4}.get(unit)
        if per_unit is not None and (mpp := _plausible(per_unit / xres)) is not None:
            return mpp
        ij = tif.imagej_metadata or {}
        if unit == 1 and str(ij.get("unit", "")).lower() in _MICRON_UNITS:
            # ImageJ stores pixels per calibration unit with ResolutionUnit "none".
            if (mpp := _plausible(_MICRON_UNITS[str(ij["unit"]).lower()] / xres)) is not None:
                return mpp
    if tif.is_ome and (mpp := _ome_mpp(tif.ome_metadata)) is not None:
        return mpp
    description = page.description or ""
    match = re.search(r"\bMPP\s*=\s*([0-9.eE+-]+)", description)  # Aperio SVS header
    if match:
        try:
            return _plausible(float(match.group(1)))
        except ValueError:
            return None
    return None


def _ome_mpp(xml: str | None) -> float | None:
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for element in root.iter():
        if element.tag.endswith("Pixels") and "PhysicalSizeX" in element.attrib:
            unit = element.attrib.get("PhysicalSizeXUnit", "µm")
            factor = _MICRON_UNITS.get(unit.lower())
            try:
                size = float(element.attrib["PhysicalSizeX"])
            except ValueError:
                return None
            return _plausible(size * factor) if factor is not None else None
    return None


def _to_rgb8(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 2)):
        raise InputError(f"{path}: greyscale image; pathseg needs an RGB brightfield image")
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise InputError(
            f"{path}: unsupported image layout {tuple(array.shape)}; "
            "pathseg needs an RGB image with 3 (or RGBA 4) channels"
        )
    if array.dtype == np.uint8:
        pass
    elif array.dtype == np.uint16:
        if array.max(initial=0) > 255:
            # 65535 / 257 == 255 exactly: full 16-bit range maps onto full 8-bit range.
            array = ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
        else:
            array = array.astype(np.uint8)
    else:
        raise InputError(f"{path}: unsupported pixel type {array.dtype}; expected 8- or 16-bit RGB")
    if array.shape[-1] == 4:
        alpha = array[..., 3]
        if alpha.min(initial=255) == 255:
            array = array[..., :3]
        else:
            log.debug("%s: compositing transparent pixels on white", path)
            a = alpha[..., None].astype(np.float32) / 255.0
            array = np.rint(array[..., :3] * a + 255.0 * (1.0 - a)).astype(np.uint8)
    return np.ascontiguousarray(array)
