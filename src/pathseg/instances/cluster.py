"""Instances from a pixel embedding (De Brabandere et al. 2017): cluster the foreground's embeddings.

Instances never span two connected components of the foreground, so each component is clustered on
its own: small problems, and a component whose embeddings are all within the bandwidth of their mean
is one instance without any clustering (most isolated TAMs).

Mean-shift is written here rather than taken from sklearn: sklearn.cluster.MeanShift iterates a
radius-neighbour query per seed over all points (close to O(n^2) per call, bin seeding or not) and then
labels with another neighbour search. On benchmarks/bench_cluster.py (docs/results/bench_cluster.json,
one thread, E = 8) it took ~42 s per megapixel of foreground, whole image or per component alike, where
this module takes ~0.5-0.8 s (mean-shift) or ~2.5-4 s (HDBSCAN): a slide with 100 MP of foreground would
wait over an hour for sklearn. Here: few seeds chosen to cover the embedding (farthest point), all seeds
shifted at once with BLAS distance matrices, and most components never clustered.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label as label_regions
from skimage.segmentation import relabel_sequential, watershed

METHODS = ("meanshift", "hdbscan")
_EIGHT = np.ones((3, 3), bool)
_CHUNK = 1 << 22  # seeds x pixels distances computed at once (16 MB of float32)
_MAX_ITER = 50
_MAX_ROUNDS = 8  # seeding rounds per component (see _mean_shift_modes)
_MAX_SHIFT_PX = 1 << 16  # modes of bigger components are sought on a random subsample of this many pixels
_HDBSCAN_POINTS = 4  # HDBSCAN sees at most this many times max_seeds pixels (it needs density, not coverage)


def _sq_norm(a: np.ndarray) -> np.ndarray:
    """Squared row norms (einsum: a sum over a short last axis is slow in numpy)."""
    return np.einsum("ij,ij->i", a, a)


def _sq_dist(a: np.ndarray, b: np.ndarray, aa: np.ndarray | None = None, bb: np.ndarray | None = None) -> np.ndarray:
    """Squared distances (len(a), len(b)) by the BLAS expansion, clipped at 0; aa, bb: known squared norms."""
    aa = _sq_norm(a) if aa is None else aa
    bb = _sq_norm(b) if bb is None else bb
    d = a @ b.T
    d *= -2.0
    d += aa[:, None]
    d += bb[None, :]
    return np.maximum(d, 0.0, out=d)


def _farthest_seeds(x: np.ndarray, xx: np.ndarray, bandwidth: float, max_seeds: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of seeds such that every pixel lies within the bandwidth of one (or max_seeds reached).

    A random subsample misses small instances (1% of a component is missed by 256 random seeds 8% of
    the time); greedy farthest-point seeds cover every cluster however small, with few seeds.
    """
    idx = [int(rng.integers(len(x)))]
    d = _sq_dist(x, x[idx[0]][None], xx)[:, 0]
    h2 = bandwidth * bandwidth
    while len(idx) < max_seeds:
        far = int(np.argmax(d))
        if d[far] <= h2:
            break
        idx.append(far)
        np.minimum(d, _sq_dist(x, x[far][None], xx)[:, 0], out=d)
    return np.asarray(idx)


def _ball_means(x: np.ndarray, xx: np.ndarray, s: np.ndarray, h2: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the pixels within the bandwidth of each seed, and their count (chunked over pixels)."""
    sums = np.zeros_like(s)
    count = np.zeros(len(s), np.float32)
    ss = _sq_norm(s)
    step = max(1, _CHUNK // max(1, len(s)))
    for i in range(0, len(x), step):
        xc = x[i:i + step]
        inside = (_sq_dist(s, xc, ss, xx[i:i + step]) <= h2).astype(np.float32)
        sums += inside @ xc
        count += inside.sum(1)
    return sums / np.maximum(count, 1.0)[:, None], count


def _mean_shift_modes(x: np.ndarray, bandwidth: float, max_seeds: int, min_support: int,
                      rng: np.random.Generator) -> np.ndarray:
    """Flat-kernel mean-shift modes (k, E), merged when closer than the bandwidth, strongest first."""
    if len(x) > _MAX_SHIFT_PX:  # a huge component's density is as well described by a subsample
        min_support = max(1, round(min_support * _MAX_SHIFT_PX / len(x)))
        x = x[np.sort(rng.choice(len(x), _MAX_SHIFT_PX, replace=False))]
    xx = _sq_norm(x)
    h2 = bandwidth * bandwidth
    modes, supports = [], []
    todo = np.arange(len(x))
    for _ in range(_MAX_ROUNDS):
        s = x[todo[_farthest_seeds(x[todo], xx[todo], bandwidth, max_seeds, rng)]]
        active = np.ones(len(s), bool)
        for _ in range(_MAX_ITER):
            a = np.flatnonzero(active)
            new, _ = _ball_means(x, xx, s[a], h2)
            moved = _sq_norm(new - s[a])
            s[a] = new
            active[a[moved <= (1e-3 * bandwidth) ** 2]] = False
            if not active.any():
                break
        support = _ball_means(x, xx, s, h2)[1]
        strong = support >= min_support
        new_mode = not modes or bool((_nearest_mode(s[strong], np.concatenate(modes))[1] > h2).any())
        modes.append(s)
        supports.append(support)
        # More instances in the component than max_seeds seeds can cover (a carpet of touching
        # cells): seed again among the pixels that no mode has reached, while that finds new modes.
        if len(s) < max_seeds or not new_mode:
            break  # every pixel had a seed within the bandwidth: another round finds the same modes
        todo = todo[_nearest_mode(x[todo], s, xx[todo])[1] > h2]
        if len(todo) < min_support:
            break
    return _merge_modes(np.concatenate(modes), np.concatenate(supports), bandwidth, min_support)


def _merge_modes(modes: np.ndarray, support: np.ndarray, bandwidth: float, min_support: int) -> np.ndarray:
    """Keep modes by decreasing support, dropping those within the bandwidth of a kept one (as sklearn)."""
    order = np.argsort(-support, kind="stable")
    kept: list[int] = []
    h2 = bandwidth * bandwidth
    for i in order:
        if kept and support[i] < min_support:
            break  # outlier modes: their pixels join the nearest real mode
        if not kept or _sq_dist(modes[i][None], modes[kept]).min() > h2:
            kept.append(int(i))
    return modes[kept]


def _hdbscan_modes(x: np.ndarray, bandwidth: float, max_seeds: int, min_area_px: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Cluster means of sklearn HDBSCAN on random subsamples of the pixels, merged as mean-shift modes."""
    from sklearn.cluster import HDBSCAN  # sklearn >= 1.3; imported here: only this method needs it

    h2 = bandwidth * bandwidth
    modes, supports = [], []
    todo = np.arange(len(x))
    for _ in range(_MAX_ROUNDS):
        m = min(len(todo), _HDBSCAN_POINTS * max_seeds)
        sub = x[todo] if m == len(todo) else x[np.sort(rng.choice(todo, m, replace=False))]
        # The smallest instance worth finding (min_area_px pixels) holds about this many subsample points.
        mcs = max(3, int(0.5 * min_area_px * m / len(todo)))
        # No cluster_selection_epsilon: with NumPy >= 2.4 it raises TypeError in sklearn's traverse_upwards
        # (scikit-learn issue #33219); clusters closer than the bandwidth are merged below instead.
        lab = HDBSCAN(min_cluster_size=mcs, allow_single_cluster=True, copy=True).fit(sub.astype(np.float64)).labels_
        ids = np.unique(lab[lab >= 0])
        if not len(ids):
            break
        found = np.stack([sub[lab == i].mean(0) for i in ids])
        if modes and not (_nearest_mode(found, np.concatenate(modes))[1] > h2).any():
            break  # nothing new: the pixels left are noise around known modes
        modes.append(found)
        supports.append(np.bincount(lab[lab >= 0])[ids] * (len(todo) / m))
        # As for mean-shift: pixels that no cluster reached (instances the subsample missed) go again.
        todo = todo[_nearest_mode(x[todo], found)[1] > h2]
        if len(todo) < min_area_px:
            break
    if not modes:
        return x.mean(0, keepdims=True)
    return _merge_modes(np.concatenate(modes), np.concatenate(supports), bandwidth, 0)


def _nearest_mode(x: np.ndarray, modes: np.ndarray, xx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest mode of every pixel and its squared distance (chunked)."""
    xx = _sq_norm(x) if xx is None else xx
    mm = _sq_norm(modes)
    idx, dist = np.empty(len(x), np.int32), np.empty(len(x), np.float32)
    step = max(1, _CHUNK // max(1, len(modes)))
    for i in range(0, len(x), step):
        d = _sq_dist(x[i:i + step], modes, xx[i:i + step], mm)
        idx[i:i + step] = np.argmin(d, axis=1)
        dist[i:i + step] = d[np.arange(len(d)), idx[i:i + step]]
    return idx, dist


def _split_pieces(cl: np.ndarray, mask: np.ndarray, min_area_px: int) -> np.ndarray:
    """Connected pieces of each cluster as instances; pieces below min_area_px join a touching neighbour."""
    pieces = label_regions(cl, background=0, connectivity=2)
    size = np.bincount(pieces.ravel())
    small = size < min_area_px
    small[0] = False
    if small[pieces].any():
        if small[1:].all():
            return mask.astype(np.int32)  # nothing big: the component stays one object
        markers = np.where(small[pieces], 0, pieces)
        # Flooding a flat image spreads all markers at the same pace inside the component:
        # each small piece goes to the big piece it touches (geodesically nearest).
        pieces = watershed(np.zeros(mask.shape, np.uint8), markers=markers, mask=mask, connectivity=2)
    return relabel_sequential(pieces)[0].astype(np.int32)


def cluster_embeddings(fg: np.ndarray, emb: np.ndarray, method: str = "meanshift", bandwidth: float = 1.0,
                       min_area_px: int = 20, max_seeds: int = 256, seed: int = 0) -> np.ndarray:
    """Instance map (int32 (H, W), 0 background, 1..N) from a foreground mask and its embedding (E, H, W)."""
    if method not in METHODS:
        raise ValueError(f"unknown clustering method {method!r}; known: {', '.join(METHODS)}")
    fg = np.asarray(fg, bool)
    if emb.ndim != 3 or emb.shape[1:] != fg.shape:
        raise ValueError(f"emb (E, H, W) matching fg {fg.shape} expected, got {emb.shape}")
    if bandwidth <= 0:
        raise ValueError("bandwidth must be > 0")
    comps, _ = ndi.label(fg, structure=_EIGHT)
    out = np.zeros(fg.shape, np.int32)
    nxt = 1
    for k, sl in enumerate(ndi.find_objects(comps), start=1):
        mask = comps[sl] == k
        x = np.ascontiguousarray(emb[(slice(None), *sl)][:, mask].T, dtype=np.float32)
        # Seeded by the component's size, not its index k: the slide engine clusters one component in
        # every block that sees it whole (with different k) and must get the same objects each time.
        rng = np.random.default_rng([seed, len(x)])
        lab = _cluster_component(x, mask, method, bandwidth, min_area_px, max_seeds, rng)
        view = out[sl]
        view[mask] = lab[mask] + (nxt - 1)
        nxt += int(lab.max())
    return out


def _cluster_component(x: np.ndarray, mask: np.ndarray, method: str, bandwidth: float, min_area_px: int,
                       max_seeds: int, rng: np.random.Generator) -> np.ndarray:
    """Instance ids 1..k over one component's bounding box (0 outside the component)."""
    one = mask.astype(np.int32)
    spread2 = _sq_norm(x - x.mean(0)).max()
    if len(x) < 2 * min_area_px or spread2 < bandwidth * bandwidth:
        return one  # too small to hold two instances, or every pixel within the bandwidth of the mean
    if method == "meanshift":
        modes = _mean_shift_modes(x, bandwidth, max_seeds, max(1, min_area_px // 2), rng)
    else:
        modes = _hdbscan_modes(x, bandwidth, max_seeds, min_area_px, rng)
    if len(modes) < 2:
        return one
    cl = np.zeros(mask.shape, np.int32)
    cl[mask] = _nearest_mode(x, modes)[0] + 1
    return _split_pieces(cl, mask, min_area_px)
