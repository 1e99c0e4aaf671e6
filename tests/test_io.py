"""Tests for pathseg.io: reading images/datasets and atomic, QuPath-compatible writers."""

from __future__ import annotations

import csv
import errno
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import pathseg.io.read as read_mod
from pathseg.errors import InputError, OutputError
from pathseg.io import (
    Sample,
    check_pair,
    ensure_output_dir,
    instance_polygons,
    list_images,
    list_samples,
    read_image,
    read_label,
    write_geojson,
    write_json,
    write_label_map,
    write_overlay,
    write_table_csv,
)
from pathseg.measure import measure_instances

MONUSEG_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "monuseg" / "train"


def _rgb(h: int = 6, w: int = 8) -> np.ndarray:
    return np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)


def _save_png(path: Path, array: np.ndarray, **kwargs) -> Path:
    Image.fromarray(array).save(path, **kwargs)
    return path


# --------------------------------------------------------------------------- read_image


def test_rgb_png_read_as_is_with_dpi(tmp_path):
    rgb = _rgb()
    array, mpp = read_image(_save_png(tmp_path / "a.png", rgb, dpi=(50800, 50800)))
    assert array.dtype == np.uint8 and array.shape == (6, 8, 3)
    np.testing.assert_array_equal(array, rgb)
    assert mpp == pytest.approx(0.5, rel=1e-3)


def test_default_72_dpi_is_not_a_pixel_size(tmp_path):
    _, mpp = read_image(_save_png(tmp_path / "a.png", _rgb(), dpi=(72, 72)))
    assert mpp is None


def test_rgba_opaque_drops_alpha(tmp_path):
    rgba = np.dstack([_rgb(), np.full((6, 8), 255, np.uint8)])
    array, _ = read_image(_save_png(tmp_path / "a.png", rgba))
    np.testing.assert_array_equal(array, _rgb())


def test_rgba_transparent_composited_on_white(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 3] = [[0, 255], [128, 255]]
    array, _ = read_image(_save_png(tmp_path / "a.png", rgba))
    assert array.shape == (2, 2, 3)
    assert array[0, 0].tolist() == [255, 255, 255]  # fully transparent -> white glass
    assert array[0, 1].tolist() == [0, 0, 0]
    assert 125 <= array[1, 0, 0] <= 129  # half transparent black -> mid grey


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_greyscale_refused(tmp_path, suffix):
    path = tmp_path / f"grey{suffix}"
    grey = np.zeros((5, 5), np.uint8)
    _save_png(path, grey) if suffix == ".png" else tifffile.imwrite(path, grey)
    with pytest.raises(InputError, match="greyscale image; pathseg needs an RGB brightfield image") as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_16bit_rgb_scaled_to_8bit(tmp_path):
    data = np.zeros((2, 2, 3), np.uint16)
    data[0, 0] = 65535
    data[0, 1] = 257 * 100
    tifffile.imwrite(tmp_path / "a.tif", data, photometric="rgb")
    array, _ = read_image(tmp_path / "a.tif")
    assert array.dtype == np.uint8
    assert array[0, 0].tolist() == [255] * 3 and array[0, 1].tolist() == [100] * 3


def test_16bit_rgb_with_8bit_range_is_cast(tmp_path):
    data = np.full((2, 2, 3), 200, np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", data, photometric="rgb")
    array, _ = read_image(tmp_path / "a.tif")
    assert array.dtype == np.uint8 and (array == 200).all()


def test_planar_tiff_transposed(tmp_path):
    rgb = _rgb()
    tifffile.imwrite(tmp_path / "p.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    array, _ = read_image(tmp_path / "p.tif")
    np.testing.assert_array_equal(array, rgb)


def test_tiff_codec_missing_falls_back_to_pillow(tmp_path, monkeypatch):
    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / "lzw.tif", compression="tiff_lzw", dpi=(50800, 50800))

    def no_codec(*args, **kwargs):
        raise ValueError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")

    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", no_codec)
    array, mpp = read_image(tmp_path / "lzw.tif")
    np.testing.assert_array_equal(array, rgb)
    assert mpp == pytest.approx(0.5, rel=1e-3)


def test_other_channel_counts_refused(tmp_path):
    tifffile.imwrite(tmp_path / "five.tif", np.zeros((5, 6, 6), np.uint8), photometric="minisblack", planarconfig="contig")
    with pytest.raises(InputError, match="five.tif"):
        read_image(tmp_path / "five.tif")


@pytest.mark.parametrize(
    ("resolution", "unit", "expected"),
    [((20000, 20000), "CENTIMETER", 0.5), ((50800, 50800), "INCH", 0.5), ((72, 72), "INCH", None), ((1, 1), "NONE", None)],
)
def test_mpp_from_tiff_resolution_tags(tmp_path, resolution, unit, expected):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, _rgb(), photometric="rgb", resolution=resolution, resolutionunit=unit)
    _, mpp = read_image(path)
    assert mpp == (pytest.approx(expected) if expected else None)


def test_mpp_from_imagej_and_ome_metadata(tmp_path):
    tifffile.imwrite(tmp_path / "ij.tif", _rgb(), imagej=True, resolution=(4, 4), metadata={"unit": "um"})
    assert read_image(tmp_path / "ij.tif")[1] == pytest.approx(0.25)
    tifffile.imwrite(tmp_path / "a.ome.tif", _rgb(), photometric="rgb", metadata={"PhysicalSizeX": 0.2527})
    assert read_image(tmp_path / "a.ome.tif")[1] == pytest.approx(0.2527)


def test_explicit_mpp_overrides_file(tmp_path):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, _rgb(), photometric="rgb", resolution=(20000, 20000), resolutionunit="CENTIMETER")
    assert read_image(path, mpp=0.25)[1] == 0.25
    with pytest.raises(InputError, match="positive"):
        read_image(path, mpp=-1)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(InputError, match="nope.png: file not found"):
        read_image(tmp_path / "nope.png")


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_truncated_file_names_the_file(tmp_path, suffix):
    full = tmp_path / f"full{suffix}"
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    tifffile.imwrite(full, noise, photometric="rgb") if suffix == ".tif" else _save_png(full, noise)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(InputError) as info:
        read_image(cut)
    assert str(cut) in str(info.value)


def test_garbage_file_refused(tmp_path):
    (tmp_path / "x.png").write_text("not an image")
    with pytest.raises(InputError, match="x.png: cannot read image"):
        read_image(tmp_path / "x.png")


def test_too_many_pixels_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(read_mod, "MAX_PIXELS", 10)
    _save_png(tmp_path / "a.png", _rgb())
    tifffile.imwrite(tmp_path / "a.tif", _rgb(), photometric="rgb")
    for name in ("a.png", "a.tif"):
        with pytest.raises(InputError, match="slide engine"):
            read_image(tmp_path / name)


def test_list_images_folder_glob_and_missing(tmp_path):
    for name in ("b.png", "a.tif", "c.JPG"):
        _save_png(tmp_path / name, _rgb()) if name != "a.tif" else tifffile.imwrite(tmp_path / name, _rgb())
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    _save_png(tmp_path / "sub" / "d.png", _rgb())
    result = list_images([
        tmp_path,
        str(tmp_path / "**" / "*.png"),
        tmp_path / "missing.png",
        tmp_path / "a.tif",  # duplicate of a folder entry
        str(tmp_path / "*.nothing"),
    ])
    names = [p.relative_to(tmp_path).as_posix() for p in result]
    assert names == ["a.tif", "b.png", "c.JPG", "sub/d.png", "missing.png"]


# --------------------------------------------------------------------------- datasets


def _make_dataset(root: Path, names=("s2", "s1"), labelled=("s1", "s2")) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for name in names:
        _save_png(root / "images" / f"{name}.png", _rgb())
    for name in labelled:
        write_label_map(root / "labels" / f"{name}.png", np.ones((6, 8), np.int32))
    return root


def test_list_samples_sorted(tmp_path):
    root = _make_dataset(tmp_path / "ds")
    samples = list_samples(root)
    assert samples == [
        Sample("s1", root / "images" / "s1.png", root / "labels" / "s1.png"),
        Sample("s2", root / "images" / "s2.png", root / "labels" / "s2.png"),
    ]


def test_list_samples_missing_label(tmp_path):
    root = _make_dataset(tmp_path / "ds", labelled=("s1",))
    with pytest.raises(InputError, match="s2"):
        list_samples(root)
    assert [s.label for s in list_samples(root, require_labels=False)] == [root / "labels" / "s1.png", None]


def test_list_samples_bad_layout(tmp_path):
    with pytest.raises(InputError, match="images/"):
        list_samples(tmp_path)
    (tmp_path / "images").mkdir()
    with pytest.raises(InputError, match="no images found"):
        list_samples(tmp_path)


@pytest.mark.data
@pytest.mark.skipif(not MONUSEG_TRAIN.is_dir(), reason="shared MoNuSeg data not present")
def test_list_samples_on_monuseg():
    samples = list_samples(MONUSEG_TRAIN)
    assert len(samples) == 13 and all(s.label is not None for s in samples)


def test_read_label_refuses_rgb(tmp_path):
    with pytest.raises(InputError, match="RGB label image"):
        read_label(_save_png(tmp_path / "l.png", _rgb()))


def test_check_pair(tmp_path):
    check_pair(_rgb(), np.zeros((6, 8), np.int32), "ok")
    with pytest.raises(InputError, match="s1: image is 8 x 6 px but its label map is 7 x 6 px"):
        check_pair(_rgb(), np.zeros((6, 7), np.int32), "s1")


# --------------------------------------------------------------------------- writers


def test_label_map_round_trip_png_and_tif(tmp_path):
    labels = np.arange(48, dtype=np.int32).reshape(6, 8) * 1000  # up to 47000: 16-bit
    write_label_map(tmp_path / "l.png", labels)
    assert Image.open(tmp_path / "l.png").mode.startswith("I;16")
    back = read_label(tmp_path / "l.png")
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, labels)

    labels[0, 0] = 70000
    write_label_map(tmp_path / "l.tif", labels)
    np.testing.assert_array_equal(read_label(tmp_path / "l.tif"), labels)
    with pytest.raises(OutputError, match=r"\.tif"):
        write_label_map(tmp_path / "big.png", labels)
    assert not (tmp_path / "big.png").exists()


def test_atomic_writes_leave_no_temp_files(tmp_path):
    labels = np.zeros((6, 8), np.int32)
    labels[1:3, 1:4] = 1
    write_label_map(tmp_path / "l.png", labels)
    write_overlay(tmp_path / "o.png", _rgb(), labels)
    write_table_csv(tmp_path / "t.csv", {"id": np.array([1])})
    write_geojson(tmp_path / "g.geojson", labels)
    write_json(tmp_path / "run.json", {"a": 1})
    assert sorted(os.listdir(tmp_path)) == ["g.geojson", "l.png", "o.png", "run.json", "t.csv"]


def test_failed_write_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "l.png"
    target.write_bytes(b"old")

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    with pytest.raises(OutputError, match="l.png: cannot write"):
        write_label_map(target, np.ones((4, 4), np.int32))
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["l.png"]


def test_write_into_missing_folder_is_output_error(tmp_path):
    with pytest.raises(OutputError, match="t.csv"):
        write_table_csv(tmp_path / "no" / "t.csv", [{"a": 1}])


def test_overlay_draws_inner_contours(tmp_path):
    image = np.full((10, 10, 3), 100, np.uint8)
    labels = np.zeros((10, 10), np.int32)
    labels[2:8, 2:8] = 1
    write_overlay(tmp_path / "o.png", image, labels, color=(255, 0, 0))
    out = np.asarray(Image.open(tmp_path / "o.png"))
    assert out[2, 2].tolist() == [255, 0, 0] and out[7, 5].tolist() == [255, 0, 0]
    assert out[5, 5].tolist() == [100, 100, 100] and out[0, 0].tolist() == [100, 100, 100]


def test_table_csv_columns_and_rows(tmp_path):
    write_table_csv(tmp_path / "c.csv", {"id": np.array([1, 2]), "v": np.array([0.123456, np.nan])})
    rows = list(csv.reader(open(tmp_path / "c.csv", newline="")))
    assert rows == [["id", "v"], ["1", "0.1235"], ["2", ""]]
    write_table_csv(tmp_path / "r.csv", [{"a": 1, "b": "x"}, {"a": 2.5, "c": None}])
    rows = list(csv.reader(open(tmp_path / "r.csv", newline="")))
    assert rows == [["a", "b", "c"], ["1", "x", ""], ["2.5", "", ""]]


def test_write_json_converts_numpy(tmp_path):
    write_json(tmp_path / "run.json", {"n": np.int64(3), "x": np.float32(0.5), "a": np.arange(2),
                                       "nan": float("nan"), "p": tmp_path})
    data = json.loads((tmp_path / "run.json").read_text())
    assert data == {"n": 3, "x": 0.5, "a": [0, 1], "nan": None, "p": str(tmp_path)}


def _two_squares() -> np.ndarray:
    labels = np.zeros((20, 30), np.int32)
    labels[2:6, 3:8] = 1  # rows 2..5, columns 3..7
    labels[10:18, 20:28] = 5
    return labels


def _signed_area(ring) -> float:
    xy = np.asarray(ring)
    return 0.5 * float(np.sum(xy[:-1, 0] * xy[1:, 1] - xy[1:, 0] * xy[:-1, 1]))


@pytest.mark.parametrize("simplify", [0.0, 0.5])
def test_instance_polygons_bounds_orientation_closed(simplify):
    polygons = instance_polygons(_two_squares(), offset=(100, 1000), simplify=simplify)
    assert sorted(polygons) == [1, 5]
    # Pixel (r, c) covers [c, c + 1] x [r, r + 1]: columns 3..7 span x = 3..8.
    for instance, bounds in {1: (103, 1002, 108, 1006), 5: (120, 1010, 128, 1018)}.items():
        ring = np.asarray(polygons[instance])
        assert ring[0].tolist() == ring[-1].tolist()
        found = (ring[:, 0].min(), ring[:, 1].min(), ring[:, 0].max(), ring[:, 1].max())
        # Simplification may move the outline by at most its tolerance.
        assert found == pytest.approx(bounds, abs=simplify)
        area = _signed_area(polygons[instance])
        assert area > 0  # counter-clockwise (RFC 7946)
        width, height = bounds[2] - bounds[0], bounds[3] - bounds[1]
        assert area == pytest.approx(width * height, abs=1.0 + simplify * (width + height))


def test_single_pixel_object_kept():
    labels = np.zeros((5, 5), np.int32)
    labels[2, 2] = 1
    ring = instance_polygons(labels)[1]
    assert len(ring) >= 4 and _signed_area(ring) > 0


def test_geojson_feature_collection_for_qupath(tmp_path):
    labels = _two_squares()
    table = measure_instances(labels)  # no mpp: area_um2 is NaN and must be left out
    count = write_geojson(tmp_path / "g.geojson", labels, properties=table, offset=(10, 20))
    text = (tmp_path / "g.geojson").read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert count == 2 and data["type"] == "FeatureCollection" and len(data["features"]) == 2
    first = data["features"][0]
    assert first["type"] == "Feature" and first["geometry"]["type"] == "Polygon"
    uuid.UUID(first["id"])
    props = first["properties"]
    assert props["objectType"] == "detection" and props["instance_id"] == 1
    assert props["classification"] == {"name": "Nucleus", "color": [0, 200, 0]}
    assert props["measurements"]["area_px"] == 20 and "area_um2" not in props["measurements"]
    assert min(x for x, _ in first["geometry"]["coordinates"][0]) == pytest.approx(13, abs=0.5)
    # Same input -> same ids, so re-imports into QuPath are recognisable.
    write_geojson(tmp_path / "h.geojson", labels, properties=table, offset=(10, 20))
    again = json.loads((tmp_path / "h.geojson").read_text())
    assert [f["id"] for f in again["features"]] == [f["id"] for f in data["features"]]


def test_geojson_properties_by_id(tmp_path):
    write_geojson(tmp_path / "g.geojson", _two_squares(), properties={5: {"score": np.float32(0.9), "tag": "x"}},
                  object_type="annotation", classification="Tumor", color=(255, 0, 0))
    features = {f["properties"]["instance_id"]: f for f in json.loads((tmp_path / "g.geojson").read_text())["features"]}
    assert features[1]["properties"]["measurements"] == {}
    assert features[5]["properties"]["measurements"] == {"score": pytest.approx(0.9)}
    assert features[5]["properties"]["objectType"] == "annotation"


def test_ensure_output_dir(tmp_path):
    out = ensure_output_dir(tmp_path / "a" / "b")
    assert out.is_dir() and os.listdir(out) == []
    (out / "result.csv").write_text("x")
    with pytest.raises(OutputError, match="not empty"):
        ensure_output_dir(out)
    assert ensure_output_dir(out, overwrite=True) == out


def test_ensure_output_dir_unwritable(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="afile"):
        ensure_output_dir(tmp_path / "afile" / "sub")  # works even as root
    with pytest.raises(OutputError, match="not a folder"):
        ensure_output_dir(tmp_path / "afile")


def test_ensure_output_dir_write_probe_fails(tmp_path, monkeypatch):
    # Simulates a read-only share; works as root, where permission bits are ignored.
    def denied(self, data):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Path, "write_bytes", denied)
    with pytest.raises(OutputError, match="out: output folder is not writable"):
        ensure_output_dir(tmp_path / "out")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores permission bits")
def test_ensure_output_dir_read_only(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable"):
            ensure_output_dir(locked)
    finally:
        locked.chmod(0o700)


def test_polygons_drop_collinear_vertices_without_changing_the_shape():
    labels = np.zeros((20, 20), np.int32)
    labels[5:15, 3:13] = 1
    ring = np.array(instance_polygons(labels)[1])
    # Marching squares cuts the 4 corners: 8 distinct vertices plus the closing one.
    assert len(ring) == 9
    area = 0.5 * abs(np.dot(ring[:-1, 0], ring[1:, 1]) - np.dot(ring[1:, 0], ring[:-1, 1]))
    assert area == pytest.approx(100 - 4 * 0.125)
