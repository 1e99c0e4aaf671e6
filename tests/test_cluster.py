"""Instances from pixel embeddings: mean-shift and HDBSCAN per connected component."""

from __future__ import annotations

import numpy as np
import pytest

from pathseg.instances import cluster_embeddings

METHODS = ("meanshift", "hdbscan")


def _field(lab: np.ndarray, centres: dict[int, tuple[float, ...]], noise: float = 0.05, seed: int = 0) -> np.ndarray:
    """Embedding (E, H, W): each id's centre plus Gaussian noise; background random."""
    rng = np.random.default_rng(seed)
    e = len(next(iter(centres.values())))
    emb = rng.normal(0, 3, (e, *lab.shape)).astype(np.float32)
    for i, c in centres.items():
        m = lab == i
        emb[:, m] = np.asarray(c, np.float32)[:, None] + rng.normal(0, noise, (e, int(m.sum())))
    return emb


def _touching_squares() -> np.ndarray:
    lab = np.zeros((30, 40), np.int32)
    lab[5:25, 4:20] = 1
    lab[5:25, 20:36] = 2  # shares an edge with 1: one connected component
    return lab


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = {(int(x), int(y)) for x, y in zip(a.ravel(), b.ravel())}
    return len(pairs) == len({p[0] for p in pairs}) == len({p[1] for p in pairs})


@pytest.mark.parametrize("method", METHODS)
def test_touching_instances_far_apart_in_embedding(method):
    lab = _touching_squares()
    emb = _field(lab, {1: (0, 0, 0, 0), 2: (3, 0, 0, 0)})
    out = cluster_embeddings(lab > 0, emb, method=method, bandwidth=1.0)
    assert out.dtype == np.int32 and out.max() == 2
    assert _same_partition(out, lab)  # exact masks


@pytest.mark.parametrize("method", METHODS)
def test_tight_component_is_one_instance(method):
    lab = _touching_squares()
    emb = _field(lab, {1: (1, 1, 0, 0), 2: (1, 1, 0, 0)}, noise=0.1)
    out = cluster_embeddings(lab > 0, emb, method=method, bandwidth=1.0)
    assert np.array_equal(out, (lab > 0).astype(np.int32))


@pytest.mark.parametrize("method", METHODS)
def test_spread_but_unimodal_component_is_one_instance(method):
    lab = _touching_squares()
    emb = _field(lab, {1: (1, 1, 0, 0), 2: (1, 1, 0, 0)}, noise=0.3, seed=2)
    spread = np.linalg.norm(emb[:, lab > 0] - emb[:, lab > 0].mean(1, keepdims=True), axis=0).max()
    assert spread > 1.0  # beyond the bandwidth: this goes through the clustering, not the shortcut
    out = cluster_embeddings(lab > 0, emb, method=method, bandwidth=1.0)
    assert np.array_equal(out, (lab > 0).astype(np.int32))


@pytest.mark.parametrize("method", METHODS)
def test_components_numbered_sequentially(method):
    lab = np.zeros((40, 60), np.int32)
    lab[2:12, 2:12] = 1
    lab[20:35, 5:25] = 2
    lab[20:35, 25:45] = 3
    lab[5:15, 40:55] = 4
    # Instances 1 and 4 share a centre: separate components stay separate objects.
    emb = _field(lab, {1: (0, 0, 0), 2: (0, 3, 0), 3: (0, 0, 3), 4: (0, 0, 0)}, noise=0.15, seed=1)
    out = cluster_embeddings(lab > 0, emb, method=method)
    assert sorted(np.unique(out)) == [0, 1, 2, 3, 4]
    assert _same_partition(out, lab)


def test_disconnected_pieces_of_one_cluster():
    # A | B | A in one component: A's two sides are separate instances (each >= min_area_px) ...
    lab = np.zeros((20, 45), np.int32)
    lab[4:16, 2:15] = 1
    lab[4:16, 15:30] = 2
    lab[4:16, 30:43] = 3
    emb = _field(lab, {1: (0, 0), 2: (3, 0), 3: (0, 0)})
    out = cluster_embeddings(lab > 0, emb, min_area_px=20)
    assert _same_partition(out, lab)
    # ... but a speck of B's embedding inside A (below min_area_px) joins the object around it.
    emb[:, 9:11, 6:8] = np.array([3, 0], np.float32)[:, None, None]
    out = cluster_embeddings(lab > 0, emb, min_area_px=20)
    assert _same_partition(out, lab)


def test_small_instance_in_a_big_component_is_found():
    # 30 px among ~1600: 8 random seeds would miss it 86% of the time, farthest-point seeds cannot.
    lab = np.zeros((50, 50), np.int32)
    lab[5:45, 5:45] = 1
    lab[20:26, 20:25] = 2
    emb = _field(lab, {1: (0, 0, 0), 2: (0, 3, 0)}, noise=0.1)
    for seed in range(3):
        out = cluster_embeddings(lab > 0, emb, bandwidth=1.0, min_area_px=20, max_seeds=8, seed=seed)
        assert _same_partition(out, lab)


@pytest.mark.parametrize("method", METHODS)
def test_deterministic(method):
    rng = np.random.default_rng(5)
    lab = np.zeros((60, 60), np.int32)
    lab[5:55, 5:30] = 1
    lab[5:55, 30:55] = 2
    lab[20:40, 20:40] = 3
    emb = _field(lab, {1: (0, 0, 0), 2: (1.6, 0, 0), 3: (0.8, 1.3, 0)}, noise=0.4, seed=int(rng.integers(100)))
    a = cluster_embeddings(lab > 0, emb, method=method, max_seeds=16, seed=3)
    b = cluster_embeddings(lab > 0, emb.copy(), method=method, max_seeds=16, seed=3)
    assert np.array_equal(a, b)


def test_empty_foreground_and_bad_arguments():
    fg = np.zeros((8, 8), bool)
    assert not cluster_embeddings(fg, np.zeros((2, 8, 8), np.float32)).any()
    with pytest.raises(ValueError):
        cluster_embeddings(fg, np.zeros((2, 8, 8)), method="kmeans")
    with pytest.raises(ValueError):
        cluster_embeddings(fg, np.zeros((2, 8, 9)))
    with pytest.raises(ValueError):
        cluster_embeddings(fg, np.zeros((2, 8, 8)), bandwidth=0)


def test_more_instances_than_seeds_in_one_component():
    # Ten touching squares in a row, 4.2 apart in embedding: 3 seeds a round cannot cover them at once.
    lab = np.zeros((12, 104), np.int32)
    for i in range(10):
        lab[2:10, 2 + 10 * i:12 + 10 * i] = i + 1
    emb = _field(lab, {i + 1: tuple(3.0 * np.eye(10)[i]) for i in range(10)}, noise=0.05)
    out = cluster_embeddings(lab > 0, emb, max_seeds=3)
    assert out.max() == 10 and _same_partition(out, lab)


def test_small_piece_touching_only_diagonally_is_absorbed():
    # A 4x4 piece of B's embedding joined to the big square by one corner (8-connected component):
    # a real mode (support 16 >= min_area_px / 2), but a piece below min_area_px.
    lab = np.zeros((20, 20), np.int32)
    lab[2:12, 2:12] = 1
    lab[12:16, 12:16] = 2
    emb = _field(lab, {1: (0, 0), 2: (3, 0)})
    out = cluster_embeddings(lab > 0, emb, min_area_px=30)
    assert np.array_equal(out, (lab > 0).astype(np.int32))
