"""Speed of the synthetic histology generator: images per second per built-in scene, one core.

Every scene generates `--n` images of `--size` px (default 300x300, the paper's training size)
with seeds 0..n-1, after 3 warm-up images, in one process pinned to one thread (BLAS/OpenMP and
torch). The target of issue 4 is >= 20 images/s per scene. Also reports the median and 95th
percentile milliseconds per image (scenes vary: cell counts are drawn per image).

    python benchmarks/bench_synth.py --out docs/results/bench_synth.json
"""

from __future__ import annotations

import os

# Pin every thread pool before numpy/scipy load: the target is per core.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pathseg._version import __version__  # noqa: E402
from pathseg.synth import generate, list_scenes, load_scene  # noqa: E402


def bench_scene(name: str, n: int, size: tuple[int, int]) -> dict:
    """Time `n` images of one scene; returns images/s, median and p95 ms, and mean objects."""
    scene = load_scene(name)
    for s in range(3):
        generate(scene, seed=10_000 + s, size=size)
    times, cpu, objects = [], [], []
    for s in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        sample = generate(scene, seed=s, size=size)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        objects.append(len(sample.table))
    ms = sorted(1000 * t for t in times)
    # CPU time of this single-threaded process is what one core delivers even when other
    # processes share the machine; wall time is reported beside it.
    return {
        "scene": name, "n": n, "size": list(size), "images_per_s": n / sum(times),
        "images_per_cpu_s": n / sum(cpu), "median_ms": statistics.median(ms), "p95_ms": ms[int(0.95 * (n - 1))],
        "median_cpu_ms": 1000 * statistics.median(cpu), "mean_objects": float(np.mean(objects)),
    }


def main() -> None:
    """Benchmark every built-in scene (or --scenes) and print/save a table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scenes", default=None, help="Comma-separated scene names (default: all built-in).")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--size", type=int, default=300)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    names = a.scenes.split(",") if a.scenes else list_scenes()
    rows = [bench_scene(name, a.n, (a.size, a.size)) for name in names]
    print("| scene | images/s (wall) | images/s (CPU time) | median ms | p95 ms | median CPU ms | objects/image |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['scene']} | {r['images_per_s']:.1f} | {r['images_per_cpu_s']:.1f} | {r['median_ms']:.1f} | "
              f"{r['p95_ms']:.1f} | {r['median_cpu_ms']:.1f} | {r['mean_objects']:.0f} |")
    if a.out:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        record = {"rows": rows, "threads": 1, "load_average_1min": load, "pathseg": __version__, "numpy": np.__version__,
                  "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                  "command": "python benchmarks/bench_synth.py" + (f" --n {a.n}" if a.n != 200 else "")}
        a.out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"written {a.out}")


if __name__ == "__main__":
    main()
