"""Tests for pathseg.wsi.outputs: label pyramid, streamed GeoJSON, slide summary, low-res overlay."""

from __future__ import annotations

import errno
import json
import os
import uuid
from contextlib import contextmanager

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from pathseg.errors import OutputError
from pathseg.io.write import _UUID_NAMESPACE, instance_polygons, write_geojson
from pathseg.measure import measure_instances
from pathseg.wsi import outputs
from pathseg.wsi.outputs import (
    GeoJsonStreamWriter,
    summarise_slide,
    write_ome_pyramid,
    write_overlay_lowres,
)


def _disc_labels(shape: tuple[int, int], n: int, seed: int = 0, first_id: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[-9:10, -9:10]
    for k in range(n):
        r = rng.integers(3, 10)
        cy, cx = rng.integers(10, shape[0] - 10), rng.integers(10, shape[1] - 10)
        disc = yy**2 + xx**2 <= r * r
        labels[cy - 9:cy + 10, cx - 9:cx + 10][disc] = first_id + k
    return labels


def _zarr(labels: np.ndarray, chunks: tuple[int, int]) -> zarr.Array:
    array = zarr.create_array(zarr.storage.MemoryStore(), shape=labels.shape, chunks=chunks, dtype=labels.dtype)
    array[:] = labels
    return array


def _files(folder) -> list[str]:
    return sorted(os.listdir(folder))


# --- OME-TIFF pyramid -------------------------------------------------------------------------

def test_ome_pyramid_levels_values_and_metadata(tmp_path):
    labels = _disc_labels((3000, 2000), 400)
    path = tmp_path / "labels.ome.tif"
    # Chunks not aligned with the 512 tiles: bands must still cover every row exactly once.
    write_ome_pyramid(path, _zarr(labels, (700, 900)), mpp=0.5)
    assert _files(tmp_path) == ["labels.ome.tif"]
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        series = tif.series[0]
        # Halved until the longer side is below 512: 3000 -> 1500 -> 750 -> 375.
        assert [level.shape for level in series.levels] == [(3000, 2000), (1500, 1000), (750, 500), (375, 250)]
        assert series.dtype == np.uint16  # 400 ids fit in 16 bits
        page = series.levels[0].keyframe
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (512, 512)
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        np.testing.assert_array_equal(series.levels[0].asarray(), labels)
        np.testing.assert_array_equal(series.levels[1].asarray(), labels[::2, ::2])
        np.testing.assert_array_equal(series.levels[3].asarray(), labels[::8, ::8])
        ome = tif.ome_metadata
    assert 'PhysicalSizeX="0.5"' in ome and 'PhysicalSizeXUnit="µm"' in ome and 'PhysicalSizeY="0.5"' in ome
    assert ome.count("<Image ") == 1  # the SubIFD levels are one image, not extra series


def test_ome_pyramid_uint32_and_no_mpp(tmp_path):
    labels = np.zeros((600, 300), np.int64)
    labels[10:20, 10:20] = 70_000  # beyond uint16
    labels[500:510, 200:210] = 3
    path = tmp_path / "big_ids.ome.tif"
    write_ome_pyramid(path, _zarr(labels, (256, 256)), mpp=None, tile=256)
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        assert series.dtype == np.uint32 and len(series.levels) == 2
        np.testing.assert_array_equal(series.asarray(), labels)
        assert "PhysicalSizeX" not in tif.ome_metadata


def test_ome_pyramid_reads_bands_not_the_whole_array(tmp_path):
    labels = _disc_labels((2048, 1024), 100)

    class Recorder:  # a label array that remembers how much each read returned
        def __init__(self, array: np.ndarray) -> None:
            self.array, self.shape, self.dtype, self.chunks, self.largest = array, array.shape, array.dtype, (512, 512), 0

        def __getitem__(self, key):
            out = self.array[key]
            self.largest = max(self.largest, out.size)
            return out

    source = Recorder(labels)
    write_ome_pyramid(tmp_path / "l.ome.tif", source, mpp=0.25, max_id=100)
    assert 0 < source.largest <= labels.size // 4  # one 512-row band of 2048 at level 0
    with tifffile.TiffFile(tmp_path / "l.ome.tif") as tif:
        np.testing.assert_array_equal(tif.series[0].asarray(), labels)


def test_ome_pyramid_disk_full_leaves_nothing(tmp_path, monkeypatch):
    real_atomic_open = outputs.atomic_open

    class FullDisk:  # a file that fails like a full disk once 20 kB are written
        def __init__(self, fh) -> None:
            self._fh, self._written = fh, 0

        def write(self, data) -> int:
            self._written += len(data)
            if self._written > 20_000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self._fh.write(data)

        def __getattr__(self, name):
            return getattr(self._fh, name)

    @contextmanager
    def full_disk_open(path):
        with real_atomic_open(path) as fh:
            yield FullDisk(fh)

    monkeypatch.setattr(outputs, "atomic_open", full_disk_open)
    path = tmp_path / "labels.ome.tif"
    labels = np.random.default_rng(0).integers(0, 60_000, (1024, 1024)).astype(np.int32)  # incompressible
    with pytest.raises(OutputError, match=r"labels\.ome\.tif: cannot write \(No space left"):
        write_ome_pyramid(path, _zarr(labels, (512, 512)), mpp=0.5)
    assert _files(tmp_path) == []  # neither the file nor its temporary


# --- streamed GeoJSON -------------------------------------------------------------------------

def _load(path):
    return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


def test_geojson_stream_features(tmp_path):
    path = tmp_path / "objects.geojson"
    square = np.array([[10.0, 20.0], [14.0, 20.0], [14.0, 24.0], [10.0, 24.0], [10.0, 20.0]])  # counter-clockwise
    clockwise_open = np.array([[100.12345, 5.0], [100.12345, 9.5], [108.0, 9.5], [108.0, 5.0]])
    with GeoJsonStreamWriter(path) as geo:
        assert geo.add(np.array([7, 8]), [square, clockwise_open],
                       {"area_um2": np.array([16.0, np.nan]), "area_px": np.array([16, 30]),
                        "flag": np.array([True, False]), "name": np.array(["a", "b"])}) == 2
        assert geo.add(np.array([], np.int64), [], {}) == 0
        assert geo.add(np.array([9, 10]), [square[:2], square + 0.5]) == 1  # a 2-point ring is left out
    assert geo.count == 3 and _files(tmp_path) == ["objects.geojson"]
    data = _load(path)
    assert data["type"] == "FeatureCollection" and len(data["features"]) == 3
    first, second, third = data["features"]
    assert first["id"] == str(uuid.uuid5(_UUID_NAMESPACE, "slide/7"))  # stable across runs
    assert first["geometry"] == {"type": "Polygon", "coordinates": [square.tolist()]}
    props = first["properties"]
    assert props["objectType"] == "detection" and props["instance_id"] == 7
    assert props["classification"] == {"name": "Nucleus", "color": [0, 200, 0]}
    assert props["measurements"] == {"area_um2": 16.0, "area_px": 16}  # numbers only, like write_geojson
    assert second["properties"]["measurements"] == {"area_px": 30}  # NaN left out
    ring = np.array(second["geometry"]["coordinates"][0])
    assert len(ring) == 5 and (ring[0] == ring[-1]).all()  # closed
    assert 0.5 * np.sum(ring[:-1, 0] * ring[1:, 1] - ring[1:, 0] * ring[:-1, 1]) > 0  # made counter-clockwise
    assert set(ring[:, 0]) == {100.123, 108.0}  # 3 decimals
    assert third["geometry"]["coordinates"][0][0] == [10.5, 20.5] and third["properties"]["instance_id"] == 10


def test_geojson_stream_matches_write_geojson(tmp_path):
    labels = _disc_labels((200, 300), 25, seed=3)
    table = measure_instances(labels, mpp=0.5)
    table["eccentricity"][::3] = np.nan
    write_geojson(tmp_path / "ref.geojson", labels, properties=table)
    rings = instance_polygons(labels)
    ids = [i for i in table["id"].tolist() if i in rings]
    rows = np.searchsorted(table["id"], ids)
    with GeoJsonStreamWriter(tmp_path / "stream.geojson") as geo:
        geo.add(np.array(ids), [np.array(rings[i]) for i in ids], {k: v[rows] for k, v in table.items() if k != "id"})
    ref, got = _load(tmp_path / "ref.geojson")["features"], _load(tmp_path / "stream.geojson")["features"]
    assert len(got) == len(ref) > 10
    for a, b in zip(ref, got):
        assert a["geometry"] == b["geometry"] and a["properties"] == b["properties"]


def test_geojson_stream_empty_and_failure(tmp_path):
    with GeoJsonStreamWriter(tmp_path / "empty.geojson", classification="Tumor", color=(255, 0, 0)):
        pass
    assert _load(tmp_path / "empty.geojson") == {"type": "FeatureCollection", "features": []}
    with pytest.raises(KeyError), GeoJsonStreamWriter(tmp_path / "broken.geojson") as geo:
        geo.add(np.array([1]), [np.array([[0, 0], [1, 0], [1, 1], [0, 0]])])
        raise KeyError("a failure half-way")
    assert _files(tmp_path) == ["empty.geojson"]  # no partial file, no temporary
    with pytest.raises(ValueError, match="2 ids but 1 rings"), GeoJsonStreamWriter(tmp_path / "bad.geojson") as geo:
        geo.add(np.array([1, 2]), [np.zeros((4, 2))])
    assert _files(tmp_path) == ["empty.geojson"]


# --- summary ----------------------------------------------------------------------------------

def test_summarise_slide_hand_case():
    table = {"id": np.array([1, 2, 3, 4]), "centroid_x": np.array([0.0, 1, 2, 3]),
             "area_um2": np.array([10.0, 20.0, 30.0, np.nan]), "solidity": np.array([0.9, 0.8, np.nan, 1.0]),
             "size_class": np.array(["small", "large", "small", "small"])}
    summary = summarise_slide(table, tissue_area_um2=2e6, extra={"slide": "s1", "mpp": np.float32(0.5)})
    assert summary["n_objects"] == 4 and summary["tissue_area_mm2"] == 2.0 and summary["density_per_mm2"] == 2.0
    area = summary["area_um2"]
    assert area["n"] == 3 and area["mean"] == 20.0 and area["sd"] == 10.0 and area["median"] == 20.0
    assert area["p25"] == 15.0 and area["p5"] == pytest.approx(11.0)
    hist = area["histogram"]
    assert len(hist["edges"]) == 31 and hist["edges"][0] == 1.0 and hist["edges"][-1] == 1000.0
    assert sum(hist["counts"]) == 3 and hist["below"] == 0 and hist["above"] == 0
    assert summary["medians"] == {"area_um2": 20.0, "solidity": 0.9}  # ids and positions left out
    assert summary["counts_by"] == {"size_class": {"large": 1, "small": 3}}
    assert summary["slide"] == "s1" and summary["mpp"] == 0.5
    json.dumps(summary, allow_nan=False)


def test_summarise_slide_empty_and_no_tissue():
    empty = {"id": np.empty(0, np.int64), "area_um2": np.empty(0)}
    summary = summarise_slide(empty, tissue_area_um2=0.0)
    assert summary["n_objects"] == 0 and summary["density_per_mm2"] is None
    assert summary["area_um2"]["mean"] is None and summary["area_um2"]["histogram"]["counts"] == [0] * 30
    assert summarise_slide({}, tissue_area_um2=None)["tissue_area_mm2"] is None
    json.dumps(summary, allow_nan=False)


# --- low-resolution overlay -------------------------------------------------------------------

def test_overlay_lowres_outlines_tissue_and_dots(tmp_path):
    labels = np.zeros((800, 1200), np.int32)
    labels[100:300, 200:400] = 1  # 50x50 px on the 4x smaller thumbnail
    labels[600:602, 1000:1002] = 2  # 2x2: vanishes at 1/4 scale
    thumbnail = np.full((200, 300, 3), 230, np.uint8)
    tissue = np.zeros((200, 300), bool)
    tissue[10:190, 10:290] = True
    path = tmp_path / "overlay.png"
    write_overlay_lowres(path, thumbnail, _zarr(labels, (256, 256)), tissue, centroids=np.array([[300.0, 200.0],
                                                                                               [1000.5, 600.5]]))
    image = np.asarray(Image.open(path))
    green, blue = (image == (0, 255, 0)).all(-1), (image == (0, 0, 255)).all(-1)
    assert image.shape == (200, 300, 3) and _files(tmp_path) == ["overlay.png"]
    assert green[25, 50:100].all() and green[25:75, 50].all()  # the square's outline
    assert not green[30:70, 55:95].any()  # but not its inside
    assert green[150, 250] and green.sum() == 4 * 49 + 1  # the vanished object as one dot
    assert blue[10, 10:290].all() and not blue[100, 100]
    write_overlay_lowres(tmp_path / "small.png", thumbnail, labels, None, max_size=150)
    small = np.asarray(Image.open(tmp_path / "small.png"))
    assert small.shape == (100, 150, 3) and (small == (0, 255, 0)).all(-1)[12:37, 25].all()
