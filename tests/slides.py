"""Synthetic whole slides for tests and benchmarks: pyramidal (OME-)TIFF and Aperio-like SVS writers."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["half", "pyramid_levels", "synthetic_slide", "write_aperio", "write_pyramid", "write_pyramid_tiles"]


def synthetic_slide(height: int, width: int, seed: int = 0, nuclei: int | None = None) -> np.ndarray:
    """An H&E-like RGB (height, width, 3) uint8 image: pink tissue with purple nuclei on white glass."""
    rng = np.random.default_rng(seed)
    # Smooth blobs of tissue: a coarse random field blurred and thresholded.
    field = Image.fromarray(rng.integers(0, 255, (max(2, height // 128), max(2, width // 128)), np.uint8))
    field = np.asarray(field.resize((width, height), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(24)))
    tissue = field > np.percentile(field, 45)
    image = np.full((height, width, 3), 243, np.uint8)
    image[tissue] = (228, 160, 196)
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    n = nuclei if nuclei is not None else height * width // 900
    ys, xs = rng.integers(0, height, n), rng.integers(0, width, n)
    radii = rng.integers(3, 8, n)
    for y, x, r in zip(ys, xs, radii):
        if tissue[y, x]:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=(96, 52, 150))
    out = np.asarray(canvas.filter(ImageFilter.GaussianBlur(1))).astype(np.int16)
    out += rng.integers(-4, 5, out.shape, dtype=np.int16)
    return np.clip(out, 0, 255).astype(np.uint8)


def half(image: np.ndarray) -> np.ndarray:
    """The next pyramid level: 2 x 2 box average (odd last row/column averaged alone), as the writers use."""
    return np.asarray(Image.fromarray(image).reduce(2))


def pyramid_levels(image: np.ndarray, levels: int = 3) -> list[np.ndarray]:
    """The level images `write_pyramid` stores: each one `half` of the previous."""
    out = [image]
    for _ in range(levels - 1):
        out.append(half(out[-1]))
    return out


def _options(mpp: float | None, ome: bool, compression: str) -> tuple[dict, dict]:
    """(level-0 write options, reduced-level write options) carrying mpp as OME PhysicalSize or resolution tags."""
    common = {"photometric": "rgb", "compression": compression}
    if ome:
        meta: dict = {"axes": "YXS"}
        if mpp is not None:
            meta.update(PhysicalSizeX=mpp, PhysicalSizeXUnit="µm", PhysicalSizeY=mpp, PhysicalSizeYUnit="µm")
        return {**common, "metadata": meta}, common
    first = {**common, "metadata": None}
    if mpp is not None:
        first.update(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    return first, {**common, "metadata": None}


def write_pyramid(path: str | Path, image: np.ndarray, mpp: float | None = 0.25, levels: int = 3, tile: int = 256,
                  ome: bool = True, compression: str = "zlib", subifds: bool = True) -> Path:
    """Write a tiled pyramidal (OME-)TIFF whose levels are 2x `half` reductions, with mpp metadata (or none).

    OME files carry mpp as PhysicalSizeX, plain TIFFs as resolution tags. `subifds=False` stores
    the reduced levels as further pages (as OpenSlide's generic TIFF and Philips do) instead of SubIFDs.
    """
    path = Path(path)
    first, reduced = _options(mpp, ome, compression)
    pyramid = pyramid_levels(image, levels)
    with tifffile.TiffWriter(path, ome=ome, bigtiff=image.nbytes > 2**31) as tw:
        tw.write(pyramid[0], tile=(tile, tile), subifds=(levels - 1 or None) if subifds else None, **first)
        for level in pyramid[1:]:
            tw.write(level, tile=(tile, tile), subfiletype=1, **reduced)
    return path


def write_pyramid_tiles(path: str | Path, shape: tuple[int, int], tile_fn: Callable[[int, int, int, int], np.ndarray],
                        mpp: float | None = 0.25, levels: int = 3, tile: int = 512, ome: bool = True,
                        compression: str = "zlib") -> Path:
    """Write the same pyramid as `write_pyramid` from `tile_fn(y, x, height, width)` -> RGB level-0 block.

    Never holds the image: tile_fn is asked once for each level-0 tile (row-major, at most tile x tile);
    the reduced levels are built row band by row band into temporary memory-mapped files beside `path`
    (a quarter of the image size in all), since OME SubIFDs must follow level 0 in the file.
    Always BigTIFF (40k^2 slides pass 4 GB).
    """
    path = Path(path)
    height, width = shape
    if tile % 2:
        raise ValueError(f"tile must be even so that 2x reductions stay aligned, got {tile}")
    first, reduced = _options(mpp, ome, compression)
    shapes = [(height, width, 3)]
    for _ in range(levels - 1):
        h, w, _c = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2, 3))

    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".pyramid-") as tmp:
        maps = {k: np.lib.format.open_memmap(Path(tmp) / f"{k}.npy", "w+", np.uint8, shapes[k])
                for k in range(1, levels)}

        def level0() -> Iterator[np.ndarray]:
            for y in range(0, height, tile):
                band = [np.asarray(tile_fn(y, x, min(tile, height - y), min(tile, width - x)), np.uint8)
                        for x in range(0, width, tile)]
                if levels > 1:  # reduced before yielding: the writer stops asking after the last tile
                    part = half(np.concatenate(band, axis=1))  # an even row offset: rows y/2.. of level 1
                    maps[1][y // 2:y // 2 + len(part)] = part
                yield from band

        def stored(k: int) -> Iterator[np.ndarray]:
            if k >= 2:  # from the finished level above, in bands of 2 * tile rows
                for y in range(0, shapes[k - 1][0], 2 * tile):
                    part = half(np.asarray(maps[k - 1][y:y + 2 * tile]))
                    maps[k][y // 2:y // 2 + len(part)] = part
            for y in range(0, shapes[k][0], tile):
                for x in range(0, shapes[k][1], tile):
                    yield np.ascontiguousarray(maps[k][y:y + tile, x:x + tile])

        with tifffile.TiffWriter(path, ome=ome, bigtiff=True) as tw:
            tw.write(level0(), shape=shapes[0], dtype=np.uint8, tile=(tile, tile), subifds=levels - 1 or None,
                     **first)
            for k in range(1, levels):
                tw.write(stored(k), shape=shapes[k], dtype=np.uint8, tile=(tile, tile), subfiletype=1, **reduced)
        maps.clear()  # release the memory maps before the folder is removed
    return path


def write_aperio(path: str | Path, image: np.ndarray, mpp: float | None = 0.5, levels: int = 2,
                 tile: int = 256, compression: str = "jpeg") -> Path:
    """Write an Aperio-like SVS (levels 4x apart, Aperio ImageDescription) that OpenSlide opens as 'aperio'."""
    path = Path(path)
    pyramid = pyramid_levels(image, 2 * levels - 1)[::2]
    h, w = image.shape[:2]
    header = f"Aperio Image Library v12.0.0\r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q=90|AppMag = 20"
    if mpp is not None:
        header += f"|MPP = {mpp}"
    with tifffile.TiffWriter(path) as tw:
        for i, level in enumerate(pyramid):
            text = header if i == 0 else f"Aperio Image Library v12.0.0\r\n{w}x{h} -> {level.shape[1]}x{level.shape[0]}"
            tw.write(level, tile=(tile, tile), photometric="rgb", compression=compression, description=text,
                     metadata=None)
    return path
