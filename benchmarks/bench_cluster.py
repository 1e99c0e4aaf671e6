"""Speed and accuracy of embedding clustering (pathseg.instances.cluster), seconds per megapixel of foreground.

A synthetic slide region stands in for a trained embedding network's output: `--size`^2 px with about
15% foreground made of 300+ discs (radius 14-34 px, a third placed touching an earlier one). Each instance
has an E = 8 embedding centre 2-2.4 delta_d from another of its connected component and >= 2 delta_d from
all of them (what L_dist asks, no more); pixels get Gaussian noise of typical norm delta_v / 2 ("nominal")
or delta_v ("noisy", the var hinge's limit); "close" is an under-trained net whose centres keep only 70% of
that margin. Pixels at contacts move delta_v towards the touching instance, and 2% of pixels are
outliers at 1.5 delta_v. "carpet" is one connected disc of 600 touching Voronoi cells (more instances
in a component than max_seeds). Timed on one thread; accuracy is F1 of detection
(IoU 0.5) and AJI against the generating instances. sklearn MeanShift (bin_seeding) runs on a smaller
case for the record, on all its foreground at once and per connected component.

    python benchmarks/bench_cluster.py --out docs/results/bench_cluster.json
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402
from skimage.measure import label as label_regions  # noqa: E402

from pathseg._version import __version__  # noqa: E402
from pathseg.instances.cluster import cluster_embeddings  # noqa: E402
from pathseg.metrics.objects import aji, f1_detection  # noqa: E402

DV, DD = 0.5, 1.5  # DiscriminativeLoss defaults
# (name, typical noise norm, fraction of the 2 delta_d margin that the centres of a component keep)
CASES = (("nominal", DV / 2, 1.0), ("noisy", DV, 1.0), ("close", DV / 2, 0.7))


def make_case(size: int, seed: int = 0, e: int = 8, fg_frac: float = 0.15, noise_norm: float = DV / 2,
              margin: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(instances int32 (H, W), embedding float32 (E, H, W)) of a synthetic TAM-like field."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((size, size), np.int32)
    discs: list[tuple[int, int, int]] = []
    k = 0
    while (lab > 0).mean() < fg_frac:
        r = int(rng.integers(14, 35))
        if discs and rng.random() < 1 / 3:  # touch an earlier disc, overlapping a little
            cy0, cx0, r0 = discs[int(rng.integers(len(discs)))]
            a = rng.uniform(0, 2 * np.pi)
            cy, cx = int(cy0 + (r0 + r - 4) * np.sin(a)), int(cx0 + (r0 + r - 4) * np.cos(a))
        else:
            cy, cx = (int(v) for v in rng.integers(r, size - r, 2))
        y0, y1, x0, x1 = max(0, cy - r), min(size, cy + r + 1), max(0, cx - r), min(size, cx + r + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        k += 1
        lab[y0:y1, x0:x1][disc] = k
        discs.append((cy, cx, r))
    # Painting over earlier discs can cut them in pieces: annotated instances are connected, so
    # every piece is an instance, and slivers under 20 px are dropped.
    lab = label_regions(lab, background=0, connectivity=2)
    small = np.bincount(lab.ravel()) < 20
    small[0] = False
    lab = _relabel(np.where(small[lab], 0, lab))
    n = int(lab.max())
    comps, _ = ndi.label(lab > 0, structure=np.ones((3, 3)))
    comp_of = np.zeros(n + 1, np.int64)
    comp_of[lab.ravel()] = comps.ravel()
    centres = np.zeros((n + 1, e), np.float32)
    # L_dist stops pushing at 2 delta_d (and L_reg pulls towards 0): the centres of a component sit
    # just beyond that margin from one another, the hard case for clustering.
    for i in range(1, n + 1):
        peers = [j for j in range(1, i) if comp_of[j] == comp_of[i]]
        c = rng.uniform(-3, 3, e)
        for _ in range(1000 if peers else 0):
            u = rng.normal(size=e)
            c = centres[peers[int(rng.integers(len(peers)))]] + margin * rng.uniform(2.0, 2.4) * DD * u / np.linalg.norm(u)
            if all(np.linalg.norm(c - centres[j]) >= margin * 2 * DD for j in peers):
                break
        centres[i] = c
    emb = centres[lab].transpose(2, 0, 1).copy()
    # Contacts: pixels with another instance in their 3x3 window lean delta_v towards it.
    hi = ndi.maximum_filter(lab, size=3)
    lo = ndi.minimum_filter(np.where(lab > 0, lab, n + 1), size=3)
    other = np.where(hi != lab, hi, np.where(lo != lab, lo, 0))
    contact = (lab > 0) & (other > 0) & (other <= n)
    towards = centres[other[contact]] - centres[lab[contact]]
    emb[:, contact] += (DV * towards / np.linalg.norm(towards, axis=1, keepdims=True)).T
    noise = rng.normal(0, noise_norm / np.sqrt(e), emb.shape).astype(np.float32)
    outlier = (rng.random(lab.shape) < 0.02) & (lab > 0)
    direction = rng.normal(size=(e, int(outlier.sum()))).astype(np.float32)
    noise[:, outlier] = 1.5 * DV * direction / np.linalg.norm(direction, axis=0)
    emb += noise
    emb[:, lab == 0] = rng.normal(0, 1, (e, int((lab == 0).sum()))).astype(np.float32)
    return lab, emb


def make_carpet(size: int, cells: int, seed: int = 0, e: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A disc of touching Voronoi cells (one connected component), embeddings distinct among neighbours.

    The network sees a bounded field of view, so only cells within a few diameters get distinct
    centres (L_dist acts inside a training patch); far cells may share one.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= (0.45 * size) ** 2
    pts = np.argwhere(disc)[rng.choice(int(disc.sum()), cells, replace=False)]
    grid = np.ones((size, size), bool)
    grid[pts[:, 0], pts[:, 1]] = False
    _, ind = ndi.distance_transform_edt(grid, return_indices=True)
    order = np.zeros((size, size), np.int32)
    order[pts[:, 0], pts[:, 1]] = np.arange(1, cells + 1)
    lab = np.where(disc, order[ind[0], ind[1]], 0).astype(np.int32)
    cell_d = 2 * np.sqrt(disc.sum() / cells / np.pi)
    centres = np.zeros((cells + 1, e), np.float32)
    for i in range(1, cells + 1):
        near = np.flatnonzero(np.hypot(*(pts[: i - 1] - pts[i - 1]).T) < 3 * cell_d) + 1
        for _ in range(1000):
            c = rng.uniform(-3, 3, e)
            if not len(near) or np.linalg.norm(centres[near] - c, axis=1).min() >= 2 * DD:
                break
        centres[i] = c
    emb = centres[lab].transpose(2, 0, 1).copy()
    emb += rng.normal(0, DV / 2 / np.sqrt(e), emb.shape).astype(np.float32)
    return lab, emb


def _relabel(lab: np.ndarray) -> np.ndarray:
    ids = np.unique(lab)
    lut = np.zeros(int(lab.max()) + 1, np.int32)
    lut[ids] = np.arange(len(ids), dtype=np.int32)
    return lut[lab]


def run_ours(lab: np.ndarray, emb: np.ndarray, method: str, bandwidth: float, repeats: int = 1) -> dict:
    """Time and score cluster_embeddings on the true foreground."""
    fg = lab > 0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pred = cluster_embeddings(fg, emb, method=method, bandwidth=bandwidth)
        times.append(time.perf_counter() - t0)
    mp = fg.sum() / 1e6
    return {"method": method, "bandwidth": bandwidth, "size": lab.shape[0], "fg_mp": round(mp, 4),
            "instances": int(lab.max()), "found": int(pred.max()), "seconds": min(times), "s_per_mp_fg": min(times) / mp,
            "f1_iou50": f1_detection(lab, pred), "aji": aji(lab, pred)}


def run_sklearn(lab: np.ndarray, emb: np.ndarray, bandwidth: float, per_component: bool) -> dict:
    """sklearn MeanShift(bin_seeding=True) on all foreground pixels at once, or per component."""
    from sklearn.cluster import MeanShift

    fg = lab > 0
    t0 = time.perf_counter()
    pred = np.zeros(lab.shape, np.int32)
    if per_component:
        comps, _ = ndi.label(fg, structure=np.ones((3, 3)))
        nxt = 0
        for k, sl in enumerate(ndi.find_objects(comps), start=1):
            m = comps[sl] == k
            x = emb[(slice(None), *sl)][:, m].T
            c = MeanShift(bandwidth=bandwidth, bin_seeding=True).fit_predict(x)
            pred[sl][m] = c + 1 + nxt
            nxt += int(c.max()) + 1
    else:
        c = MeanShift(bandwidth=bandwidth, bin_seeding=True).fit_predict(emb[:, fg].T)
        pred[fg] = c + 1
        pred = label_regions(pred, background=0, connectivity=2).astype(np.int32)  # clusters may span objects
    secs = time.perf_counter() - t0
    mp = fg.sum() / 1e6
    return {"method": "sklearn MeanShift" + (" per component" if per_component else " whole"), "bandwidth": bandwidth,
            "size": lab.shape[0], "fg_mp": round(mp, 4), "instances": int(lab.max()), "found": int(len(np.unique(pred)) - 1),
            "seconds": secs, "s_per_mp_fg": secs / mp, "f1_iou50": f1_detection(lab, pred), "aji": aji(lab, pred)}


def main() -> None:
    """Benchmark both methods (and a bandwidth sweep), then sklearn on a crop; print and save a table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--small", type=int, default=512, help="Side of the case for the sklearn comparison.")
    ap.add_argument("--carpet", type=int, default=1024, help="Side of the one-component carpet case.")
    ap.add_argument("--carpet-cells", type=int, default=600)
    ap.add_argument("--bandwidths", default="0.5,1.0,1.5,2.0,2.5")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    rows = []
    for case, noise, margin in CASES:
        lab, emb = make_case(a.size, seed=0, noise_norm=noise, margin=margin)
        for bw in (float(b) for b in a.bandwidths.split(",")):
            rows.append({"case": case, **run_ours(lab, emb, "meanshift", bw)})
        rows.append({"case": case, **run_ours(lab, emb, "hdbscan", 1.0)})
    lab, emb = make_carpet(a.carpet, cells=a.carpet_cells)
    for method in ("meanshift", "hdbscan"):
        rows.append({"case": "carpet", **run_ours(lab, emb, method, 1.0)})
    small_lab, small_emb = make_case(a.small, seed=1)
    rows.append({"case": "nominal", **run_ours(small_lab, small_emb, "meanshift", 1.0)})
    rows.append({"case": "nominal", **run_ours(small_lab, small_emb, "hdbscan", 1.0)})
    rows.append({"case": "nominal", **run_sklearn(small_lab, small_emb, 1.0, per_component=True)})
    rows.append({"case": "nominal", **run_sklearn(small_lab, small_emb, 1.0, per_component=False)})
    print("| case | method | bandwidth | image | fg MP | instances | found | s | s / MP fg | F1@0.5 | AJI |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['method']} | {r['bandwidth']:g} | {r['size']}^2 | {r['fg_mp']:.3f} | {r['instances']} | "
              f"{r['found']} | {r['seconds']:.2f} | {r['s_per_mp_fg']:.2f} | {r['f1_iou50']:.3f} | {r['aji']:.3f} |")
    if a.out:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        record = {"rows": rows, "threads": 1, "delta_v": DV, "delta_d": DD, "cases": CASES, "embed_dim": int(small_emb.shape[0]),
                  "load_average_1min": load, "pathseg": __version__, "numpy": np.__version__,
                  "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                  "command": "python benchmarks/bench_cluster.py --out docs/results/bench_cluster.json"}
        a.out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"written {a.out}")


if __name__ == "__main__":
    main()
