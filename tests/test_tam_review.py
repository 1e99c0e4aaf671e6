"""Regression tests for defects found in the review of issue 5 (TAMs)."""

from __future__ import annotations

import numpy as np
import pytest

from pathseg.instances import cluster_embeddings


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = {(int(x), int(y)) for x, y in zip(a.ravel(), b.ravel())}
    return len(pairs) == len({p[0] for p in pairs}) == len({p[1] for p in pairs})


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("method", ["meanshift", "hdbscan"])
def test_a_component_clusters_the_same_whatever_comes_before_it(method, seed):
    # The slide engine clusters a component in every block that sees it whole, where it has
    # another index among the block's components: the objects must not depend on that index
    # (the rng was seeded with it, and HDBSCAN's subsample changed: duplicated or lost objects).
    rng = np.random.default_rng(seed)
    lab = np.zeros((120, 200), np.int32)
    lab[30:90, 40:80], lab[30:90, 80:120], lab[30:90, 120:160] = 1, 2, 3
    emb = rng.normal(0, 3, (3, *lab.shape)).astype(np.float32)
    for i, c in {1: (0, 0, 0), 2: (1.6, 0, 0), 3: (0.8, 1.4, 0)}.items():
        m = lab == i
        emb[:, m] = np.asarray(c, np.float32)[:, None] + rng.normal(0, 0.3, (3, int(m.sum())))
    fg = lab > 0
    alone = cluster_embeddings(fg, emb, method=method, max_seeds=16)
    fg2 = fg.copy()
    fg2[2:8, 2:8] = True  # one more component, first in raster order
    after = cluster_embeddings(fg2, emb, method=method, max_seeds=16)
    assert _same_partition(alone[fg], after[fg])


def test_weight_map_disk_cache_is_keyed_by_the_algorithm_version(tmp_path, monkeypatch):
    # The .npz cache lives beside the dataset and outlives code changes: a new definition of the
    # weight map must not be served the maps of the old one.
    import pathseg.losses.instance_weights as iw

    lab = np.zeros((20, 30), np.int32)
    lab[5:12, 3:10], lab[5:12, 14:21] = 1, 2
    iw.WeightMapCache(tmp_path).get(lab)
    monkeypatch.setattr(iw, "WEIGHT_MAP_VERSION", iw.WEIGHT_MAP_VERSION + 1)
    again = iw.WeightMapCache(tmp_path)
    again.get(lab)
    assert again.computed == 1
