"""Training targets and instance extraction."""

from __future__ import annotations

import numpy as np

from pathseg.instances import BOUNDARY, INTERIOR, PostProcess, instances_from_probs, three_class_target
from pathseg.metrics import aji


def _two_touching_disks(size=40):
    yy, xx = np.mgrid[:size, :size]
    lab = np.zeros((size, size), np.int32)
    lab[(yy - 20) ** 2 + (xx - 12) ** 2 <= 64] = 1
    lab[(yy - 20) ** 2 + (xx - 27) ** 2 <= 64] = 2  # touches disk 1 (centres 15 apart, r 8)
    return lab


def test_three_class_target_hand_case():
    lab = np.zeros((7, 7), np.int32)
    lab[1:6, 1:6] = 1
    t = three_class_target(lab, width=1)
    assert t[0].tolist() == [0] * 7
    assert t[1, 1:6].tolist() == [BOUNDARY] * 5
    assert t[3, 1:6].tolist() == [BOUNDARY, INTERIOR, INTERIOR, INTERIOR, BOUNDARY]


def test_touching_objects_get_a_boundary_between_them():
    lab = _two_touching_disks()
    t = three_class_target(lab, width=2)
    # Along the row through both centres the two interiors are separated by boundary class.
    row = t[20, 12:28]
    assert INTERIOR in row and BOUNDARY in row[5:12]


def _probs_from_target(t):
    p = np.zeros((3,) + t.shape, np.float32)
    for c in range(3):
        p[c] = t == c
    return 0.9 * p + 0.1 / 3


def test_watershed_separates_touching_nuclei_and_components_do_not():
    lab = _two_touching_disks()
    probs = _probs_from_target(three_class_target(lab, width=2))
    ws = instances_from_probs(probs, PostProcess(min_area_px=5))
    cc = instances_from_probs(probs, PostProcess(min_area_px=5, watershed=False))
    assert ws.max() == 2 and cc.max() == 1
    assert aji(lab, ws) > 0.95 > aji(lab, cc)


def test_small_objects_are_dropped_and_ids_are_sequential():
    probs = np.zeros((3, 30, 30), np.float32)
    probs[0] = 1
    probs[:, 2:4, 2:4] = [[[0]], [[1]], [[0]]]  # 4 px object
    probs[:, 10:20, 10:20] = [[[0]], [[1]], [[0]]]  # 100 px object
    out = instances_from_probs(probs, PostProcess(min_area_px=20))
    assert out.max() == 1 and (out == 1).sum() == 100


def test_two_class_output_uses_components():
    probs = np.zeros((2, 20, 20), np.float32)
    probs[0] = 1
    probs[:, 2:8, 2:8] = [[[0]], [[1]]]
    probs[:, 10:18, 10:18] = [[[0]], [[1]]]
    assert instances_from_probs(probs, PostProcess(min_area_px=1)).max() == 2
