"""Tests for pathseg.measure: per-instance morphometry and haematoxylin intensity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.draw import disk
from skimage.measure import regionprops_table

from pathseg.measure import COLUMNS, measure_instances, table_rows

RADIUS = 10


def _disk_and_square() -> np.ndarray:
    labels = np.zeros((60, 80), np.int32)
    labels[disk((20, 25), RADIUS, shape=labels.shape)] = 1
    labels[35:55, 50:70] = 2  # 20 x 20 square, rows 35..54, columns 50..69
    return labels


def test_shape_measurements():
    table = measure_instances(_disk_and_square())
    assert list(table) == list(COLUMNS)
    assert table["id"].tolist() == [1, 2]
    # Disk
    assert table["area_px"][0] == pytest.approx(math.pi * RADIUS**2, rel=0.03)
    assert (table["centroid_x"][0], table["centroid_y"][0]) == pytest.approx((25, 20))
    assert table["perimeter_px"][0] == pytest.approx(2 * math.pi * RADIUS, rel=0.05)
    assert table["eccentricity"][0] < 0.1
    assert 0.95 < table["solidity"][0] <= 1
    # Square
    assert table["area_px"][1] == 400
    assert (table["centroid_x"][1], table["centroid_y"][1]) == pytest.approx((59.5, 44.5))
    assert table["perimeter_px"][1] == pytest.approx(80, rel=0.05)
    assert table["solidity"][1] == 1.0
    assert table["eccentricity"][1] == pytest.approx(0, abs=1e-9)
    # Without mpp/image the calibrated and intensity columns are NaN.
    for column in ("area_um2", "perimeter_um", "mean_haematoxylin"):
        assert np.isnan(table[column]).all()


def test_micrometre_columns():
    mpp = 0.25
    table = measure_instances(_disk_and_square(), mpp=mpp)
    np.testing.assert_allclose(table["area_um2"], table["area_px"] * mpp**2)
    np.testing.assert_allclose(table["perimeter_um"], table["perimeter_px"] * mpp)


def test_haematoxylin_higher_for_blue_nucleus():
    labels = _disk_and_square()
    image = np.full(labels.shape + (3,), 245, np.uint8)
    image[labels == 1] = (60, 40, 150)  # haematoxylin-like blue/purple
    image[labels == 2] = (235, 150, 190)  # eosin-like pink
    table = measure_instances(labels, image=image)
    assert np.isfinite(table["mean_haematoxylin"]).all()
    assert table["mean_haematoxylin"][0] > table["mean_haematoxylin"][1]


def test_empty_label_map():
    table = measure_instances(np.zeros((10, 10), np.int32), image=np.zeros((10, 10, 3), np.uint8), mpp=0.5)
    assert list(table) == list(COLUMNS)
    assert all(len(v) == 0 for v in table.values())
    assert table_rows(table) == []


def test_matches_regionprops_on_irregular_labels():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 6, (40, 50)).astype(np.int32)  # fragmented, touching objects
    labels[labels == 3] = 0  # a missing id
    table = measure_instances(labels)
    ref = regionprops_table(labels, properties=("label", "area", "centroid", "perimeter", "eccentricity", "solidity"))
    np.testing.assert_array_equal(table["id"], ref["label"])
    np.testing.assert_array_equal(table["area_px"], ref["area"])
    np.testing.assert_allclose(table["centroid_y"], ref["centroid-0"])
    np.testing.assert_allclose(table["centroid_x"], ref["centroid-1"])
    np.testing.assert_allclose(table["perimeter_px"], ref["perimeter"])
    np.testing.assert_allclose(table["eccentricity"], ref["eccentricity"], atol=1e-9)
    np.testing.assert_allclose(table["solidity"], ref["solidity"])


def test_sparse_huge_ids():
    labels = _disk_and_square()
    big = labels.astype(np.int64) * 3_000_000
    small, large = measure_instances(labels), measure_instances(big)
    assert large["id"].tolist() == [3_000_000, 6_000_000]
    for column in COLUMNS[1:]:
        np.testing.assert_allclose(large[column], small[column], equal_nan=True)


def test_table_rows():
    rows = table_rows(measure_instances(_disk_and_square(), mpp=0.5))
    assert len(rows) == 2 and rows[1]["id"] == 2 and rows[1]["area_px"] == 400
    assert isinstance(rows[0]["id"], int) and isinstance(rows[0]["solidity"], float)


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        measure_instances(np.zeros((4, 4, 3), np.int32))
    with pytest.raises(ValueError):
        measure_instances(np.zeros((4, 4), np.int32), image=np.zeros((5, 4, 3), np.uint8))


def test_tile_with_1000_objects():
    # Speed is measured in benchmarks/bench_postprocess.py, not asserted here.
    labels = np.zeros((1000, 1000), np.int32)
    ids = np.arange(1, 1001).reshape(25, 40)[:, :, None, None]
    # 25 x 40 grid of 14 x 14 px objects on a 40 x 25 px pitch.
    cells = np.zeros((25, 40, 40, 25), np.int32)
    cells[:, :, 5:19, 5:19] = 1
    labels[:, :] = (cells * ids).transpose(0, 2, 1, 3).reshape(1000, 1000)
    image = np.full((1000, 1000, 3), 200, np.uint8)
    table = measure_instances(labels, image=image, mpp=0.25)
    assert len(table["id"]) == 1000
    np.testing.assert_allclose(table["area_px"], 196)
    np.testing.assert_allclose(table["solidity"], 1.0)
