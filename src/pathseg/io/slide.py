"""Whole-slide images: one reader interface over OpenSlide, tifffile pyramids and in-memory images."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import openslide
import tifffile
import zarr
from PIL import Image

from pathseg.errors import InputError, PathsegError
from pathseg.io.read import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    WSI_SUFFIXES,
    _plausible,
    _reason,
    _tiff_mpp,
    _to_rgb8,
    read_image,
)

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["SLIDE_SUFFIXES", "ArraySlide", "OpenSlideSlide", "Slide", "TiffSlide", "is_slide", "open_slide"]

log = logging.getLogger(__name__)

_VENDOR_SUFFIXES = WSI_SUFFIXES
_TIFF_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff")
SLIDE_SUFFIXES = _VENDOR_SUFFIXES + _TIFF_SUFFIXES
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# A TIFF with one level is a slide (tiled reading) rather than a tile image beyond this side.
_SLIDE_SIDE = 8192
# A level read within this relative distance of the requested pixel size is used as is.
EXACT_TOL = 0.1
# Source pixels resampled at once; larger requests (thumbnails of unpyramided slides) go in bands.
_BAND_PIXELS = 2**25
_WHITE = 255


class Slide:
    """A whole-slide image: levels, pixel size and thread-safe region reads in the level-0 frame."""

    path: Path | None
    name: str
    dimensions: tuple[int, int]
    level_dimensions: list[tuple[int, int]]
    level_downsamples: list[float]
    mpp: float | None
    bounds: tuple[int, int]
    vendor: str

    def __init__(self, path: Path | None, name: str, level_dimensions: list[tuple[int, int]],
                 level_downsamples: list[float], mpp: float | None, vendor: str,
                 bounds: tuple[int, int] = (0, 0)) -> None:
        self.path, self.name, self.vendor, self.bounds = path, name, vendor, bounds
        self.level_dimensions = [(int(w), int(h)) for w, h in level_dimensions]
        self.level_downsamples = [float(d) for d in level_downsamples]
        self.dimensions = self.level_dimensions[0]
        self.mpp = mpp
        self._closed = False

    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""
        return len(self.level_dimensions)

    def read_region(self, x: int, y: int, width: int, height: int, level: int = 0) -> np.ndarray:
        """RGB uint8 (height, width, 3) region at `level`, x/y in that level's pixels; outside is white."""
        x, y, width, height, level = int(x), int(y), int(width), int(height), int(level)
        if self._closed:
            raise ValueError(f"{self._label()}: slide is closed")
        if not 0 <= level < self.level_count:
            raise ValueError(f"level {level} out of range: the slide has {self.level_count} levels")
        if width < 0 or height < 0:
            raise ValueError(f"region size must not be negative, got {width} x {height}")
        lw, lh = self.level_dimensions[level]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + width, lw), min(y + height, lh)
        if x0 >= x1 or y0 >= y1:
            return np.full((height, width, 3), _WHITE, np.uint8)
        try:
            inside = self._read(level, x0, y0, x1 - x0, y1 - y0)
        except PathsegError:
            raise
        except MemoryError as exc:
            raise InputError(f"{self._label()}: not enough memory to read a {width} x {height} region") from exc
        except Exception as exc:  # decoders raise many types (OpenSlideError, zlib errors, ValueError, ...)
            raise InputError(f"{self._label()}: cannot read slide ({_reason(exc)})") from exc
        if (x0, y0, x1, y1) == (x, y, x + width, y + height):
            return inside
        out = np.full((height, width, 3), _WHITE, np.uint8)
        out[y0 - y:y1 - y, x0 - x:x1 - x] = inside
        return out

    def read_at(self, x: int, y: int, width: int, height: int, mpp: float) -> np.ndarray:
        """RGB uint8 (height, width, 3) region of the grid with pixel size `mpp` µm; outside is white."""
        mpp = _check_mpp(mpp, self._label())
        if self.mpp is None:
            raise InputError(f"{self._label()}: pixel size unknown; give it explicitly (mpp, µm/px)")
        return self._read_scaled(int(x), int(y), int(width), int(height), mpp / self.mpp, EXACT_TOL)

    def thumbnail(self, max_size: int = 2048) -> tuple[np.ndarray, float]:
        """RGB thumbnail whose longer side is <= max_size, and its downsample (level-0 px per thumbnail px)."""
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        w, h = self.dimensions
        longest = max(w, h)
        if longest <= max_size:
            return self.read_region(0, 0, w, h), 1.0
        d = longest / max_size
        # Thumbnail pixel (r, c) covers level-0 [c*d, (c+1)*d) x [r*d, (r+1)*d): the last one may overhang.
        tw, th = (min(max_size, max(1, math.ceil(n / d - 1e-9))) for n in (w, h))
        return self._read_scaled(0, 0, tw, th, d, 0.0), d

    def close(self) -> None:
        """Release the file handle."""
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        # File handles do not pickle: a copy (e.g. one sent to a dask worker) reopens the file.
        return (open_slide, (self.path, self.mpp))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, {self.vendor}, {self.dimensions[0]}x{self.dimensions[1]}, "
                f"levels={self.level_count}, mpp={self.mpp})")

    def _label(self) -> str:
        return str(self.path) if self.path is not None else self.name

    def _read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """The region, which lies inside the level, as contiguous (height, width, 3) uint8."""
        raise NotImplementedError

    def _read_scaled(self, x: int, y: int, width: int, height: int, scale: float, tol: float) -> np.ndarray:
        # Output pixel (r, c) covers level-0 [(x+c)*scale, (x+c+1)*scale) x [(y+r)*scale, (y+r+1)*scale).
        if width <= 0 or height <= 0:
            return np.full((max(height, 0), max(width, 0), 3), _WHITE, np.uint8)
        fits = [k for k, d in enumerate(self.level_downsamples) if d <= scale * (1 + tol) + 1e-9]
        level = max(fits, key=lambda k: self.level_downsamples[k]) if fits else 0
        f = scale / self.level_downsamples[level]  # level px per output px
        if abs(f - 1.0) <= tol + 1e-9:
            return self.read_region(round(x * f), round(y * f), width, height, level)
        margin = math.ceil(f) + 1  # covers the resampling filter's support at the region's border
        src_w = math.ceil((x + width) * f) - math.floor(x * f) + 2 * margin
        if src_w * (height * f + 2 * margin) > _BAND_PIXELS and height > 1:
            band = max(1, int((_BAND_PIXELS / src_w - 2 * margin) / f))
            out = np.empty((height, width, 3), np.uint8)
            for r in range(0, height, band):
                out[r:r + band] = self._read_scaled(x, y + r, width, min(band, height - r), scale, tol)
            return out
        fx0, fy0, fx1, fy1 = x * f, y * f, (x + width) * f, (y + height) * f
        sx, sy = math.floor(fx0) - margin, math.floor(fy0) - margin
        src = self.read_region(sx, sy, math.ceil(fx1) + margin - sx, math.ceil(fy1) + margin - sy, level)
        # Pillow's resize is a separable C convolution that releases the GIL and accepts a fractional
        # source box: BOX averages exactly the area each output pixel covers (downsampling), BILINEAR
        # interpolates (upsampling). It matches skimage's anti-aliased resize closely at a fraction of the cost.
        resample = Image.Resampling.BOX if f >= 1 else Image.Resampling.BILINEAR
        box = (fx0 - sx, fy0 - sy, fx1 - sx, fy1 - sy)
        return np.array(Image.fromarray(src).resize((width, height), resample, box=box))


class OpenSlideSlide(Slide):
    """A vendor slide read by OpenSlide; level-0 frame relative to the OpenSlide bounds."""

    def __init__(self, path: Path, mpp: float | None = None, handle: Any = None) -> None:
        self._osr = handle if handle is not None else openslide.OpenSlide(str(path))
        props = self._osr.properties
        full = [tuple(d) for d in self._osr.level_dimensions]
        downsamples = list(self._osr.level_downsamples)
        bx, by = (int(props.get(f"openslide.bounds-{k}", 0) or 0) for k in "xy")
        bw = int(props.get("openslide.bounds-width", 0) or 0) or full[0][0] - bx
        bh = int(props.get("openslide.bounds-height", 0) or 0) or full[0][1] - by
        dims = [(min(math.ceil(bw / d), lw - math.floor(bx / d)), min(math.ceil(bh / d), lh - math.floor(by / d)))
                for (lw, lh), d in zip(full, downsamples)]
        file_mpp = None
        with contextlib.suppress(TypeError, ValueError):
            file_mpp = _plausible(float(props.get(openslide.PROPERTY_NAME_MPP_X, "nan")))
        vendor = str(props.get(openslide.PROPERTY_NAME_VENDOR) or "openslide")
        super().__init__(path, slide_name(path), dims, downsamples, mpp if mpp is not None else file_mpp, vendor, (bx, by))

    def _read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        d = self.level_downsamples[level]
        # OpenSlide takes the location in the file's absolute level-0 frame whatever the level.
        location = (self.bounds[0] + round(x * d), self.bounds[1] + round(y * d))
        region = self._osr.read_region(location, level, (width, height))
        # Alpha alone: 4x cheaper than getextrema() over all bands. Transparent = not scanned: white.
        if region.getchannel("A").getextrema()[0] < 255:
            white = Image.new("RGBA", region.size, (_WHITE, _WHITE, _WHITE, 255))
            region = Image.alpha_composite(white, region)
        return np.array(region.convert("RGB"))

    def close(self) -> None:
        """Release the OpenSlide handle."""
        if not self._closed:
            self._osr.close()
        super().close()


class TiffSlide(Slide):
    """A (pyramidal, OME-) TIFF read tile by tile with tifffile; only the tiles a region needs are decoded."""

    def __init__(self, path: Path, mpp: float | None = None) -> None:
        with _tifffile_warnings() as warnings:
            self._tif = tifffile.TiffFile(path)
        try:
            with _tifffile_warnings() as more:
                series = self._tif.series[0] if self._tif.series else None
                levels = list(series.levels) if series is not None else []
            warnings += more
            damaged = [re.sub(r"<[^>]*>\s*", "", m) for m in warnings if "offset" in m or "corrupt" in m]
            if damaged:
                raise InputError(f"{path}: cannot read slide (truncated or corrupt TIFF: {damaged[0]})")
            if series is None or not levels:
                raise InputError(f"{path}: cannot read slide (the TIFF file contains no image)")
            _check_extents(path, levels)
            self._axes = series.get_axes(True)
            _check_layout(path, self._axes, series.get_shape(True), series.dtype)
            dims = [(int(s["X"]), int(s["Y"])) for s in (dict(zip(self._axes, lv.get_shape(True))) for lv in levels)]
            w0, h0 = dims[0]
            downsamples = [(w0 / w + h0 / h) / 2 for w, h in dims]  # as OpenSlide averages the two axes
            self._arrays: list[Any] = [self._open_level(path, k, lv) for k, lv in enumerate(levels)]
            self._lock = threading.Lock()
            file_mpp = _tiff_mpp(self._tif)
        except BaseException:
            self._tif.close()
            raise
        vendor = "ome-tiff" if self._tif.is_ome else "aperio" if self._tif.is_svs else "generic-tiff"
        super().__init__(path, slide_name(path), dims, downsamples, mpp if mpp is not None else file_mpp, vendor)

    def _open_level(self, path: Path, k: int, level: Any) -> Any:
        keyframe = level.keyframe
        if level.dataoffset is not None and keyframe.is_memmappable:
            # Uncompressed contiguous data (often one huge strip): map it instead of decoding strips.
            with contextlib.suppress(Exception):
                return tifffile.memmap(path, series=0, level=k, mode="r").reshape(level.get_shape(True))
        if keyframe.compression != 1 and math.prod(keyframe.chunked) == 1 and keyframe.size > 2**24:
            return None  # one compressed chunk for the whole page: decoded once, on first use (_read)
        # maxworkers > 1 makes tifffile decode chunks in worker threads instead of zarr's single event-loop
        # thread, so concurrent read_region calls decode in parallel. The store serialises file reads itself.
        store = self._tif.series[0].aszarr(level=k, squeeze=True, fillvalue=_WHITE,
                                           maxworkers=max(2, os.cpu_count() or 1))
        return zarr.open(store, mode="r")

    def _read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        array = self._arrays[level]
        if array is None:
            with self._lock:
                if self._arrays[level] is None:
                    page_pixels = math.prod(self.level_dimensions[level])
                    if page_pixels > MAX_PIXELS:
                        raise InputError(f"{self.path}: level {level} is one {page_pixels} px compressed strip; "
                                         "convert the file to a tiled pyramid (e.g. with vips or bfconvert)")
                    data = self._tif.series[0].levels[level]
                    self._arrays[level] = data.asarray().reshape(data.get_shape(True))
                array = self._arrays[level]
        index = tuple(slice(y, y + height) if a == "Y" else slice(x, x + width) if a == "X"
                      else slice(None) if a in "SC" else 0 for a in self._axes)
        # zarr returns a fresh array; memory maps and cached levels are copied so callers own the result.
        data = array[index] if isinstance(array, zarr.Array) else np.array(array[index])
        axes = "".join(a for a in self._axes if a in "YXSC")
        if axes.index("Y") != 0:  # planar (channels, y, x) storage
            data = np.moveaxis(data, 0, -1)
        if data.dtype == np.uint16:
            # Scaled by 257 always (65535 -> 255), never by a region's own maximum, so regions agree.
            data = ((data.astype(np.uint32) + 128) // 257).astype(np.uint8)
        return _to_rgb8(data, self.path) if data.shape[-1] == 4 else np.ascontiguousarray(data)

    def close(self) -> None:
        """Close the TIFF file."""
        self._tif.close()
        super().close()


class ArraySlide(Slide):
    """An RGB image held in memory, seen as a one-level slide."""

    def __init__(self, image: np.ndarray, mpp: float | None = None, name: str = "array",
                 path: Path | None = None, vendor: str = "array") -> None:
        self._image = _to_rgb8(np.asarray(image), path or Path(name))
        h, w = self._image.shape[:2]
        super().__init__(path, name, [(w, h)], [1.0], mpp, vendor)

    def __reduce__(self) -> tuple[Any, ...]:
        return (ArraySlide, (self._image, self.mpp, self.name, self.path, self.vendor))

    def _read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        return self._image[y:y + height, x:x + width].copy()


def open_slide(source: str | Path | np.ndarray, mpp: float | None = None) -> Slide:
    """Open a whole-slide image (vendor format, (OME-)TIFF, PNG/JPEG) or an RGB array as a Slide."""
    if isinstance(source, np.ndarray):
        return ArraySlide(source, None if mpp is None else _check_mpp(mpp, "array"))
    path = Path(source)
    if mpp is not None:
        mpp = _check_mpp(mpp, str(path))
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give the slide file itself")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise InputError(f"{path}: cannot read file ({_reason(exc)})") from exc
    if not magic:
        raise InputError(f"{path}: empty file (0 bytes)")
    fmt = _detect_format(path)
    try:
        if fmt is not None and fmt != "generic-tiff":
            return OpenSlideSlide(path, mpp)
        if magic in _TIFF_MAGIC:
            return TiffSlide(path, mpp)
    except PathsegError:
        raise
    except MemoryError as exc:
        raise InputError(f"{path}: not enough memory to open this slide") from exc
    except Exception as exc:  # openslide / tifffile raise many types for damaged files
        raise InputError(f"{path}: cannot read slide ({_reason(exc)})") from exc
    if path.suffix.lower() in IMAGE_SUFFIXES:
        image, file_mpp = read_image(path, mpp)
        return ArraySlide(image, file_mpp, slide_name(path), path, "image")
    raise InputError(f"{path}: cannot read slide (not a format OpenSlide or tifffile recognises; "
                     f"supported: {', '.join(SLIDE_SUFFIXES)}, .png, .jpg)")


def is_slide(path: Path) -> bool:
    """Whether `path` names a whole slide: a vendor format, or a TIFF with several levels or a side > 8192 px."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix in _VENDOR_SUFFIXES:
        return True
    if suffix not in _TIFF_SUFFIXES or not path.is_file():
        return False
    try:
        with tifffile.TiffFile(path) as tif, _tifffile_warnings():
            level = tif.series[0].levels[0]
            shape = dict(zip(level.get_axes(True), level.get_shape(True)))
            return len(tif.series[0].levels) > 1 or max(shape.get("Y", 0), shape.get("X", 0)) > _SLIDE_SIDE
    except Exception:  # noqa: BLE001 - unreadable: not something to process as a slide
        return False


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in (".ome.tif", ".ome.tiff") if name.endswith(s)), path.suffix.lower())


def slide_name(path: Path) -> str:
    name = path.name
    return name[: len(name) - len(_suffix(path))] or name


def _check_mpp(mpp: object, label: str) -> float:
    try:
        value = float(mpp)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"{label}: pixel size must be a positive number of µm/px, got {mpp!r}")
    return value


def _detect_format(path: Path) -> str | None:
    try:
        return openslide.OpenSlide.detect_format(str(path))
    except Exception:  # noqa: BLE001 - OpenSlide cannot even probe it: leave it to the other readers
        return None


@contextlib.contextmanager
def _tifffile_warnings() -> Iterator[list[str]]:
    """Collect (and silence) the warnings tifffile logs from this thread, e.g. about truncated files."""
    messages: list[str] = []
    thread = threading.get_ident()

    def keep(record: logging.LogRecord) -> bool:
        if record.thread != thread:
            return True
        messages.append(record.getMessage())
        log.debug("tifffile: %s", record.getMessage())
        return False

    logger = logging.getLogger("tifffile")
    logger.addFilter(keep)
    try:
        yield messages
    finally:
        logger.removeFilter(keep)


def _check_extents(path: Path, levels: list[Any]) -> None:
    size = path.stat().st_size
    for level in levels:
        for page in level.pages:
            if page is None or not page.dataoffsets:
                continue
            end = int(np.max(np.add(page.dataoffsets, page.databytecounts, dtype=np.int64)))
            if end > size:
                raise InputError(f"{path}: cannot read slide (file is truncated: image data runs to byte {end} "
                                 f"but the file has {size} bytes)")


def _check_layout(path: Path, axes: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    sizes = dict(zip(axes, shape))
    channels = sizes.get("S", 1) * sizes.get("C", 1)
    if "Y" not in sizes or "X" not in sizes:
        raise InputError(f"{path}: unsupported channel layout (axes {axes}); pathseg needs an RGB slide")
    if channels == 1:
        raise InputError(f"{path}: greyscale slide; pathseg needs an RGB brightfield slide")
    if channels not in (3, 4) or ("S" in sizes and "C" in sizes):
        raise InputError(f"{path}: unsupported channel layout ({channels} channels, axes {axes}); "
                         "pathseg needs an RGB brightfield slide")
    if np.dtype(dtype) not in (np.uint8, np.uint16):
        raise InputError(f"{path}: unsupported pixel type {np.dtype(dtype)}; expected 8- or 16-bit RGB")
