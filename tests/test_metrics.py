"""Tests for pathseg.metrics: hand-computed cases, naive reference implementations, invariances."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment
from skimage.draw import disk

from pathseg import metrics as M
from pathseg.metrics import objects as objects_mod

# --------------------------------------------------------------------------- fixtures

# 6x6: one prediction (5) covers two GT objects (1, 2); GT 3 is missed; prediction 9 is spurious.
AJI_TRUE = np.array(
    [
        [1, 1, 0, 2, 2, 0],
        [1, 1, 0, 2, 2, 0],
        [0, 0, 0, 0, 0, 0],
        [3, 3, 0, 0, 0, 0],
        [3, 3, 0, 0, 0, 0],
        [3, 3, 0, 0, 0, 0],
    ]
)
AJI_PRED = np.array(
    [
        [5, 5, 5, 5, 5, 0],
        [5, 5, 5, 5, 5, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 9, 9],
        [0, 0, 0, 0, 9, 9],
    ]
)

# 4x8: G1/P4 IoU 4/6, G2/P6 IoU exactly 2/4 = 0.5 (must NOT match), G3/P7 IoU 1, P8 spurious.
PQ_TRUE = np.array(
    [
        [1, 1, 0, 0, 2, 2, 0, 0],
        [1, 1, 0, 0, 2, 2, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
        [3, 3, 3, 3, 0, 0, 0, 0],
    ]
)
PQ_PRED = np.array(
    [
        [4, 4, 4, 0, 6, 0, 0, 8],
        [4, 4, 4, 0, 6, 0, 0, 8],
        [0, 0, 0, 0, 0, 0, 0, 0],
        [7, 7, 7, 7, 0, 0, 0, 0],
    ]
)

# 2x12 strip (both rows equal): greedy AJI and optimal AJI+ pair differently.
#   G1 = cols 0-5, G2 = cols 6-9; S2 = cols 0-1, S1 = cols 2-8, S3 = col 11.
GREEDY_TRUE = np.tile([1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 0, 0], (2, 1))
GREEDY_PRED = np.tile([2, 2, 1, 1, 1, 1, 1, 1, 1, 0, 0, 3], (2, 1))


def _random_pair(seed: int, shape: tuple[int, int] = (96, 96)) -> tuple[np.ndarray, np.ndarray]:
    """Random overlapping disks as truth; a jittered copy with misses, merges and false positives."""
    rng = np.random.default_rng(seed)
    true = np.zeros(shape, np.int32)
    pred = np.zeros(shape, np.int64)
    n = int(rng.integers(8, 20))
    pred_id = 0
    for k in range(1, n + 1):
        r, c = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        rad = int(rng.integers(3, 11))
        true[disk((r, c), rad, shape=shape)] = k  # later disks overwrite: ids may vanish or split
        if rng.random() < 0.15:
            continue  # missed object
        if pred_id == 0 or rng.random() > 0.2:
            pred_id += int(rng.integers(1, 50))  # non-consecutive ids; otherwise merge with the last
        jr, jc = rng.integers(-3, 4, size=2)
        pred[disk((r + jr, c + jc), max(2, rad + int(rng.integers(-2, 3))), shape=shape)] = pred_id
    for _ in range(int(rng.integers(0, 4))):  # false positives
        pred_id += 7
        pred[disk(tuple(rng.integers(0, shape[0], size=2)), int(rng.integers(2, 6)), shape=shape)] = pred_id
    return true, pred


RANDOM_PAIRS = [_random_pair(seed) for seed in range(10)]


# ------------------------------------------------------------- naive reference versions


def _ids(x: np.ndarray) -> list[int]:
    return [int(i) for i in np.unique(x) if i != 0]


def naive_aji(true: np.ndarray, pred: np.ndarray) -> float:
    """Kumar et al. 2017 reference algorithm, one boolean mask at a time."""
    t_ids, p_ids = _ids(true), _ids(pred)
    if not t_ids and not p_ids:
        return 1.0
    used: set[int] = set()
    c = u = 0
    for g in t_ids:
        gm = true == g
        best = None
        best_iou = 0.0
        for s in _ids(pred[gm]):  # ascending ids, strict '>' -> first maximum like np.argmax
            sm = pred == s
            i, un = int((gm & sm).sum()), int((gm | sm).sum())
            if i / un > best_iou:
                best, best_iou, best_i, best_u = s, i / un, i, un
        if best is None:
            u += int(gm.sum())
        else:
            c += best_i
            u += best_u
            used.add(best)
    u += sum(int((pred == s).sum()) for s in p_ids if s not in used)
    return c / u


def naive_aji_plus(true: np.ndarray, pred: np.ndarray) -> float:
    """AJI+ with a dense IoU matrix from boolean masks and one global assignment."""
    t_ids, p_ids = _ids(true), _ids(pred)
    if not t_ids and not p_ids:
        return 1.0
    inter = np.array([[((true == g) & (pred == s)).sum() for s in p_ids] for g in t_ids]).reshape(len(t_ids), len(p_ids))
    union = np.array([[((true == g) | (pred == s)).sum() for s in p_ids] for g in t_ids]).reshape(inter.shape)
    iou = inter / np.maximum(union, 1)
    rows, cols = linear_sum_assignment(iou, maximize=True)
    keep = iou[rows, cols] > 0
    rows, cols = rows[keep], cols[keep]
    c = inter[rows, cols].sum()
    u = union[rows, cols].sum()
    u += sum((true == g).sum() for i, g in enumerate(t_ids) if i not in set(rows))
    u += sum((pred == s).sum() for j, s in enumerate(p_ids) if j not in set(cols))
    return c / u


def naive_pq(true: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    """Kirillov et al. PQ = sum_TP IoU / (|TP| + |FP|/2 + |FN|/2), matches at IoU > 0.5."""
    t_ids, p_ids = _ids(true), _ids(pred)
    if not t_ids and not p_ids:
        return 1.0, 1.0, 1.0
    matched_iou = []
    for g in t_ids:
        gm = true == g
        for s in p_ids:
            sm = pred == s
            iou = (gm & sm).sum() / (gm | sm).sum()
            if iou > 0.5:
                matched_iou.append(iou)
    tp = len(matched_iou)
    fp, fn = len(p_ids) - tp, len(t_ids) - tp
    pq = sum(matched_iou) / (tp + fp / 2 + fn / 2)
    dq = tp / (tp + fp / 2 + fn / 2)
    sq = sum(matched_iou) / tp if tp else 0.0
    return pq, dq, sq


def naive_best_dice(a: np.ndarray, b: np.ndarray) -> float:
    a_ids, b_ids = _ids(a), _ids(b)
    if not a_ids:
        return 1.0 if not b_ids else 0.0
    scores = []
    for i in a_ids:
        am = a == i
        scores.append(max([2 * (am & (b == j)).sum() / (am.sum() + (b == j).sum()) for j in b_ids] + [0.0]))
    return float(np.mean(scores))


# ------------------------------------------------------------------- hand-computed cases


def test_pixel_scores_hand_case():
    true = np.zeros((4, 4), int)
    true[0:2, 0:2] = 3  # 4 px; any label > 0 is foreground
    pred = np.zeros((4, 4), int)
    pred[0:3, 1:3] = 1  # 6 px, overlapping true at (0,1), (1,1)
    s = M.pixel_scores(true, pred)
    assert (s.tp, s.fp, s.fn, s.tn) == (2, 4, 2, 8)
    assert s.precision == pytest.approx(1 / 3)  # 2 / 6
    assert s.recall == pytest.approx(1 / 2)  # 2 / 4
    assert s.dice == pytest.approx(2 / 5)  # 4 / (4 + 4 + 2)
    assert s.accuracy == pytest.approx(5 / 8)  # (2 + 8) / 16
    assert s.iou == pytest.approx(1 / 4)  # 2 / 8
    assert M.dice(true, pred) == M.f1(true, pred) == s.dice
    assert M.iou(true, pred) == M.jaccard(true, pred) == s.iou
    assert (M.precision(true, pred), M.recall(true, pred), M.accuracy(true, pred)) == (s.precision, s.recall, s.accuracy)


def test_pixel_empty_conventions():
    z = np.zeros((3, 3), int)
    one = z.copy()
    one[1, 1] = 1
    assert M.pixel_scores(z, z)[4:] == (1.0, 1.0, 1.0, 1.0, 1.0)
    s = M.pixel_scores(one, z)  # nothing predicted
    assert (s.precision, s.recall, s.dice, s.iou, s.accuracy) == (0.0, 0.0, 0.0, 0.0, pytest.approx(8 / 9))
    s = M.pixel_scores(z, one)  # nothing to find
    assert (s.precision, s.recall, s.dice, s.iou) == (0.0, 0.0, 0.0, 0.0)


def test_aji_prediction_covering_two_objects():
    # G1 -> P5: I 4, U 10; G2 -> P5 again: I 4, U 10 (P5 counted twice); G3 unmatched: U += 6;
    # P9 never picked: U += 4.  AJI = 8 / 30 = 4/15.
    assert M.aji(AJI_TRUE, AJI_PRED) == pytest.approx(4 / 15)
    # AJI+: P5 pairs with one of G1/G2 only (IoU 4/10 each): C = 4, U = 10 + 4 (other G) + 6 + 4 = 24.
    assert M.aji_plus(AJI_TRUE, AJI_PRED) == pytest.approx(1 / 6)


def test_aji_greedy_versus_optimal_pairing():
    # Per row: G1 (6 px) vs S1 (7 px): I 4, U 9, IoU 4/9; G1 vs S2 (2 px): I 2, U 6, IoU 1/3;
    # G2 (4 px) vs S1: I 3, U 8, IoU 3/8; S3 (1 px) overlaps nothing.  Two rows double every area.
    # AJI: G1 -> S1, G2 -> S1, S2 and S3 unpicked: C = 2(4 + 3), U = 2(9 + 8 + 2 + 1) -> 7/20.
    assert M.aji(GREEDY_TRUE, GREEDY_PRED) == pytest.approx(7 / 20)
    # AJI+: {G1-S2, G2-S1} (1/3 + 3/8) beats {G1-S1} (4/9): C = 2(2 + 3), U = 2(6 + 8 + 1) -> 1/3.
    assert M.aji_plus(GREEDY_TRUE, GREEDY_PRED) == pytest.approx(1 / 3)


def test_panoptic_quality_hand_case():
    # Matches: G1-P4 (IoU 2/3), G3-P7 (IoU 1); G2-P6 has IoU exactly 1/2 -> not a match.
    # TP 2, FP 2 (P6, P8), FN 1 (G2): DQ = 2 / (2 + 1 + 1/2) = 4/7, SQ = (2/3 + 1) / 2 = 5/6, PQ = 10/21.
    s = M.panoptic_quality(PQ_TRUE, PQ_PRED)
    assert (s.tp, s.fp, s.fn) == (2, 2, 1)
    assert s.dq == pytest.approx(4 / 7)
    assert s.sq == pytest.approx(5 / 6)
    assert s.pq == pytest.approx(10 / 21)
    assert s.f1 == pytest.approx(4 / 7)  # detection F1 = 2TP / (2TP + FP + FN) = 4/7
    assert M.pq(PQ_TRUE, PQ_PRED) == s.pq and M.dq(PQ_TRUE, PQ_PRED) == s.dq
    assert M.sq(PQ_TRUE, PQ_PRED) == s.sq and M.f1_detection(PQ_TRUE, PQ_PRED) == s.f1
    # Below 0.5 (one-to-one matching path) G2-P6 counts: TP 3, FP 1, FN 0: DQ = 3/3.5 = 6/7,
    # SQ = (2/3 + 1/2 + 1) / 3 = 13/18, PQ = 13/21.
    low = M.panoptic_quality(PQ_TRUE, PQ_PRED, iou_threshold=0.4)
    assert (low.tp, low.fp, low.fn) == (3, 1, 0)
    assert (low.dq, low.sq, low.pq) == pytest.approx((6 / 7, 13 / 18, 13 / 21))
    # AJI on the same case: C = 4 + 2 + 4, U = 6 + 4 + 4 + 2 (P8) -> 5/8; AJI+ pairs identically.
    assert M.aji(PQ_TRUE, PQ_PRED) == pytest.approx(5 / 8)
    assert M.aji_plus(PQ_TRUE, PQ_PRED) == pytest.approx(5 / 8)
    with pytest.raises(ValueError):
        M.panoptic_quality(PQ_TRUE, PQ_PRED, iou_threshold=1.0)


def test_best_dice_asymmetric():
    # BD(T, P): G1 best P4 = 2*4/(4+6) = 4/5; G2 best P6 = 2*2/(4+2) = 2/3; G3 = 1 -> 37/45.
    # BD(P, T): P4 4/5, P6 2/3, P7 1, P8 0 -> 37/60.  SBD = min = 37/60.
    assert M.best_dice(PQ_TRUE, PQ_PRED) == pytest.approx(37 / 45)
    assert M.best_dice(PQ_PRED, PQ_TRUE) == pytest.approx(37 / 60)
    assert M.symmetric_best_dice(PQ_TRUE, PQ_PRED) == pytest.approx(37 / 60)
    # 6x6 case: BD(T, P) = (4/7 + 4/7 + 0) / 3 = 8/21; BD(P, T) = (4/7 + 0) / 2 = 2/7.
    assert M.best_dice(AJI_TRUE, AJI_PRED) == pytest.approx(8 / 21)
    assert M.sbd(AJI_TRUE, AJI_PRED) == pytest.approx(2 / 7)


def test_empty_conventions_objects():
    z = np.zeros((5, 5), int)
    one = z.copy()
    one[1:3, 1:3] = 4
    for name in ("aji", "aji_plus", "pq", "dq", "sq", "f1_detection", "sbd"):
        assert M.METRICS[name](z, z) == 1.0, name
        assert M.METRICS[name](one, z) == 0.0, name
        assert M.METRICS[name](z, one) == 0.0, name
    assert M.evaluate_pair(z, z) == {name: 1.0 for name in M.METRIC_NAMES}
    assert M.best_dice(z, one) == 0.0 and M.best_dice(one, z) == 0.0


# ------------------------------------------------------------------ against naive versions


@pytest.mark.parametrize("idx", range(len(RANDOM_PAIRS)))
def test_against_naive_reference(idx):
    true, pred = RANDOM_PAIRS[idx]
    assert M.aji(true, pred) == pytest.approx(naive_aji(true, pred), abs=1e-9)
    assert M.aji_plus(true, pred) == pytest.approx(naive_aji_plus(true, pred), abs=1e-9)
    pq, dq, sq = naive_pq(true, pred)
    s = M.panoptic_quality(true, pred)
    assert (s.pq, s.dq, s.sq) == pytest.approx((pq, dq, sq), abs=1e-9)
    assert M.best_dice(true, pred) == pytest.approx(naive_best_dice(true, pred), abs=1e-9)
    assert M.best_dice(pred, true) == pytest.approx(naive_best_dice(pred, true), abs=1e-9)


def test_random_pairs_are_not_trivial():
    # Guard the generator: the naive comparison means little if every score were 0 or 1.
    scores = np.array([[M.aji(t, p), M.pq(t, p)] for t, p in RANDOM_PAIRS])
    assert np.all((scores > 0.05) & (scores < 0.99))
    assert any(M.aji(t, p) != M.aji_plus(t, p) for t, p in RANDOM_PAIRS)


# ----------------------------------------------------------------------------- invariances


@pytest.mark.parametrize("idx", [0, 3, 7])
def test_relabelling_invariance(idx):
    true, pred = RANDOM_PAIRS[idx]
    rng = np.random.default_rng(idx)
    base = M.evaluate_pair(true, pred)
    for x in (true, pred):
        assert set(np.unique(x)) != {0}

    def scramble(x: np.ndarray, scale: int) -> np.ndarray:
        ids = np.unique(x)[1:]
        new = rng.permutation(len(ids)) * scale + 1000  # shuffled, non-consecutive, far from 0
        lut = np.zeros(x.max() + 1, np.int64)
        lut[ids] = new
        return lut[x]

    # scale 2**40 forces the np.unique relabelling path instead of the look-up table.
    for scale in (3, 2**40):
        got = M.evaluate_pair(scramble(true, scale), scramble(pred, scale))
        assert got == pytest.approx(base, abs=1e-12)


def test_perfect_prediction_scores_one():
    true, _ = RANDOM_PAIRS[1]
    ids = np.unique(true)[1:]
    lut = np.zeros(true.max() + 1, np.int64)
    lut[ids] = ids[::-1] * 5  # same objects, different ids
    assert M.evaluate_pair(true, lut[true]) == {name: 1.0 for name in M.METRIC_NAMES}


def test_sparse_contingency_path_matches_dense(monkeypatch):
    true, pred = RANDOM_PAIRS[2]
    dense = M.evaluate_pair(true, pred)
    monkeypatch.setattr(objects_mod, "_DENSE_TABLE_MAX", 0)
    assert M.evaluate_pair(true, pred) == pytest.approx(dense, abs=1e-12)


def test_input_checks():
    with pytest.raises(ValueError):
        M.aji(np.zeros((3, 3), int), np.zeros((3, 4), int))
    with pytest.raises(ValueError):
        M.aji(np.full((2, 2), -1), np.zeros((2, 2), int))
    with pytest.raises(ValueError):
        M.aji(np.full((2, 2), 0.5), np.zeros((2, 2), int))
    # Whole-number floats and booleans are accepted as label maps.
    assert M.aji(AJI_TRUE.astype(float), AJI_PRED.astype(np.uint16)) == pytest.approx(4 / 15)
    assert M.aji(AJI_TRUE > 0, AJI_TRUE > 0) == 1.0


def test_large_maps_with_1000_objects():
    # Speed is measured in benchmarks/bench_postprocess.py, not asserted here.
    rng = np.random.default_rng(0)
    shape = (1000, 1000)

    def voronoi(n: int) -> np.ndarray:
        seeds = np.zeros(shape, np.int32)
        pts = rng.integers(0, shape[0], (n, 2))
        seeds[pts[:, 0], pts[:, 1]] = np.arange(1, n + 1)
        _, (ri, ci) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
        return seeds[ri, ci]

    true, pred = voronoi(1000), voronoi(1000)
    row = M.evaluate_pair(true, pred)
    assert all(0.0 < v <= 1.0 for v in row.values())


# ------------------------------------------------------------------------------- aggregate


def test_evaluate_pair_matches_registry():
    true, pred = RANDOM_PAIRS[4]
    row = M.evaluate_pair(true, pred)
    assert list(row) == list(M.METRIC_NAMES)
    assert set(M.METRICS) == set(M.METRIC_NAMES)
    for name, fn in M.METRICS.items():
        assert row[name] == pytest.approx(fn(true, pred), abs=1e-12), name
    assert M.evaluate_pair(true, pred, ["sbd", "dice"]) == {"sbd": row["sbd"], "dice": row["dice"]}
    with pytest.raises(ValueError):
        M.evaluate_pair(true, pred, ["dice", "nope"])


def test_summarise_with_groups_and_table():
    rows = [{"dice": 1.0, "aji": 0.5}, {"dice": 0.5, "aji": 0.7}, {"dice": 0.0}]
    s = M.summarise(rows, groups=["a", "a", "b"])
    # dice over images: mean 1/2, population std sqrt((1/4 + 0 + 1/4) / 3) = sqrt(1/6).
    assert s["dice"] == {"mean": 0.5, "std": pytest.approx(math.sqrt(1 / 6)), "n": 3}
    # aji only in two rows: mean 0.6, std 0.1.
    assert s["aji"] == {"mean": pytest.approx(0.6), "std": pytest.approx(0.1), "n": 2}
    assert s["groups"]["a"]["dice"] == {"mean": 0.75, "std": 0.25, "n": 2}
    assert s["groups"]["b"]["dice"] == {"mean": 0.0, "std": 0.0, "n": 1}
    assert s["groups"]["b"]["aji"]["n"] == 0 and math.isnan(s["groups"]["b"]["aji"]["mean"])
    # Group means: dice (3/4, 0) -> 3/8 with std 3/8; aji only group a -> 0.6.
    assert s["mean_of_groups"]["dice"] == {"mean": 0.375, "std": 0.375, "n": 2}
    assert s["mean_of_groups"]["aji"] == {"mean": pytest.approx(0.6), "std": 0.0, "n": 1}
    assert list(M.summarise(rows)) == ["dice", "aji"]

    table = M.format_table(s, extra={"model": "unet"})
    lines = table.splitlines()
    assert lines[0] == "| metric | mean (std) | mean of groups (std) |"
    assert lines[2] == "| dice | 0.500 (0.408) | 0.375 (0.375) |"
    assert lines[3] == "| aji | 0.600 (0.100) | 0.600 (0.000) |"
    assert lines[4] == "| model | unet |  |"
    plain = M.format_table(M.summarise(rows)).splitlines()
    assert plain[0] == "| metric | mean (std) |" and plain[2] == "| dice | 0.500 (0.408) |"
    with pytest.raises(ValueError):
        M.summarise(rows, groups=["a"])
