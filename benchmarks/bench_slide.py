"""Whole-slide benchmark: peak memory as the slide grows, and seconds per mm² split by stage.

Makes synthetic pyramidal slides (tifffile, JPEG tiles like an Aperio scan) of 10k², 20k²
and 40k² px at 0.25 µm/px with H&E-like tissue (pink stroma, purple nuclei) on glass
(tissue in a 10k-px band, so the processed area grows 1 : 2 : 4 while the slide grows 1 : 4 : 16),
then runs ``pathseg segment`` on each in a fresh process and records the process's peak
RSS and the stage timings from run.json. The slides are made once and cached in --work.

    python benchmarks/bench_slide.py --work /tmp/pathseg-bench --sizes 10000 20000 40000

Results go to docs/results/bench_slide.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MPP = 0.25
CELL = 64  # nuclei are placed on a jittered grid of CELL px so any tile can be drawn on its own


def tissue_fraction_at(ys: np.ndarray, xs: np.ndarray, size: int) -> np.ndarray:
    """Tissue: smooth blobs (period ~8k px) in a 10k-px band at the top, glass elsewhere.

    The band keeps the tissue area of the 20k² and 40k² slides to 2x and 4x that of the
    10k² slide, so the benchmark runs in minutes while the slide itself grows 16x.
    """
    u, v = ys / 8000.0, xs / 8000.0
    field = np.sin(6.0 * u + 1.0) * np.cos(5.0 * v + 0.3) + 0.6 * np.sin(11.0 * (u + v))
    return (field > 0.35) & (ys < 10000)


def make_tile(y: int, x: int, h: int, w: int, size: int) -> np.ndarray:
    """RGB tile of the synthetic slide at level 0, drawn independently of every other tile."""
    rng = np.random.default_rng([y, x])
    if y >= 10000:  # below the tissue band: glass only
        glass = np.full((h, w, 3), (242, 242, 240), np.float32) + rng.normal(0, 5, (h, w, 3)).astype(np.float32)
        return np.clip(glass, 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[y : y + h, x : x + w]
    tissue = tissue_fraction_at(yy, xx, size)
    img = np.empty((h, w, 3), np.float32)
    img[:] = (242, 242, 240)
    img[tissue] = (228, 150, 190)
    nucleus = np.zeros((h, w), bool)
    # Nuclei: one candidate per grid cell, position and radius from a hash of the cell, so
    # discs crossing tile borders are drawn identically by both tiles.
    for cy in range((y - 16) // CELL, (y + h + 16) // CELL + 1):
        for cx in range((x - 16) // CELL, (x + w + 16) // CELL + 1):
            cell = np.random.default_rng([cy & 0xFFFFFFF, cx & 0xFFFFFFF, 7])
            oy, ox, r = cell.integers(12, CELL - 12), cell.integers(12, CELL - 12), cell.integers(8, 13)
            py, px = cy * CELL + oy, cx * CELL + ox
            if not tissue_fraction_at(np.array(py), np.array(px), size) or cell.random() < 0.3:
                continue
            y0, y1, x0, x1 = max(py - r, y), min(py + r + 1, y + h), max(px - r, x), min(px + r + 1, x + w)
            if y0 >= y1 or x0 >= x1:
                continue
            sy, sx = np.mgrid[y0:y1, x0:x1]
            nucleus[y0 - y : y1 - y, x0 - x : x1 - x] |= (sy - py) ** 2 + (sx - px) ** 2 <= r * r
    img[nucleus & tissue] = (110, 60, 150)
    img += rng.normal(0, 5, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_slide(path: Path, size: int) -> Path:
    """Write (once) the synthetic pyramidal slide of size x size px."""
    from tests.slides import write_pyramid_tiles

    if path.exists():
        return path
    tmp = path.with_suffix(".partial.tif")
    t0 = time.perf_counter()
    write_pyramid_tiles(tmp, (size, size), lambda y, x, h, w: make_tile(y, x, h, w, size), mpp=MPP, levels=5,
                        tile=512, compression="jpeg")
    tmp.replace(path)
    print(f"made {path.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


RUNNER = """
import json, resource, sys, time
from pathlib import Path
import torch
torch.set_num_threads({threads})
from pathseg.wsi import SlideOptions, segment_slide
from pathseg.tiling import InferenceOptions
t0 = time.perf_counter()
res = segment_slide(sys.argv[1], {model!r}, out=Path(sys.argv[2]), overwrite=True,
                    options=SlideOptions(inference=InferenceOptions(window={window}, halo={halo}, batch_size={batch},
                                                                    device="cpu"), tile={tile}))
wall = time.perf_counter() - t0
print(json.dumps({{"wall_s": wall, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                   "timings": res.timings, "summary": res.summary}}))
"""


def run_one(slide: Path, out: Path, args: argparse.Namespace) -> dict:
    """Segment one slide in a fresh process; its peak RSS, timings and summary."""
    code = RUNNER.format(threads=args.threads, model=args.model, window=args.window, halo=args.halo,
                         batch=args.batch_size, tile=args.tile)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code, str(slide), str(out)], env=env, capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{slide}: benchmark run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return path.name


def main() -> None:
    """Make the slides, run them, print and save the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/pathseg-bench"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 20000, 40000])
    ap.add_argument("--model", default="nuclei-he")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--halo", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--tile", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "results" / "bench_slide.json")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        slide = make_slide(args.work / f"synthetic_{size}.tif", size)
        r = run_one(slide, args.work / "out", args)
        t, s = r["timings"], r["summary"]
        tissue_mm2 = s["tissue_area_mm2"]
        row = {"size": size, "peak_rss_gb": round(r["peak_rss_gb"], 3), "wall_s": round(r["wall_s"], 1),
               "tissue_mm2": round(tissue_mm2, 2), "s_per_mm2": round(r["wall_s"] / tissue_mm2, 2) if tissue_mm2 else None,
               "objects": s["n_objects"], "tiles": s["tiles_processed"], **t}
        wall = t["wall_s"]
        row["infer_share"] = round(t["infer_s"] / wall, 3) if wall else None
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| slide | tissue mm² | objects | wall s | s/mm² | read | infer | post | write | infer share | peak RSS GB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']}² | {r['tissue_mm2']} | {r['objects']} | {r['wall_s']} | {r['s_per_mm2']} | "
              f"{r['read_wait_s']:.1f} (threads {r['read_s']:.1f}) | {r['infer_s']:.1f} | {r['post_s']:.1f} | "
              f"{r['write_s']:.1f} | {r['infer_share']:.0%} | {r['peak_rss_gb']} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "command": "python benchmarks/bench_slide.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        # Paths recorded relative to the repository (or by name): no machine paths in the results.
        "settings": vars(args) | {"work": args.work.name, "json": _relative(args.json)},
        "rows": rows,
    }, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
