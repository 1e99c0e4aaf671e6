"""Whole-slide time of a TAM instance model, split into network and post-processing (clustering, measuring).

Builds a mosaic of synthetic CD163 test images (cd163-tam-clusters scene, 0.25 µm/px; seeds of
the test split) as one large array, runs it through the slide engine with the given model and
records the engine's stage timings: the share of post-processing must stay well below inference.

    python benchmarks/bench_tam_slide.py --model tam-ihc --side 4096 --out docs/results/bench_tam_slide.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from pathseg.models import load_model
from pathseg.synth import load_scene
from pathseg.train.tam_data import SCENE, SPLIT_SEEDS, synthetic_tam
from pathseg.wsi import SlideOptions, segment_slide


def mosaic(side: int, tile: int = 512) -> np.ndarray:
    """A side x side RGB mosaic of synthetic CD163 test images."""
    scene = load_scene(SCENE)
    n = -(-side // tile)
    rows = []
    for r in range(n):
        rows.append(np.concatenate([synthetic_tam(scene, SPLIT_SEEDS["test"] + 500 + r * n + c, (tile // 2, tile // 2))[0]
                                    for c in range(n)], axis=1))
    return np.concatenate(rows, axis=0)[:side, :side]


def main() -> None:
    """Run the benchmark and print a Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tam-ihc")
    ap.add_argument("--side", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    image = mosaic(args.side)
    t0 = time.perf_counter()
    res = segment_slide(image, lm, out=None, mpp=lm.config.mpp, options=SlideOptions(tissue=False))
    wall = time.perf_counter() - t0
    t = res.timings
    labels = np.asarray(res.labels[:])
    fg_mp = float((labels > 0).sum()) / 1e6
    row = {"model": lm.name, "side_px": args.side, "megapixels": args.side**2 / 1e6, "foreground_mp": fg_mp,
           "objects": int(len(res.table["id"])), "wall_s": round(wall, 2), "infer_s": t.get("infer_s"),
           "post_s": t.get("post_s"), "post_share": round(t.get("post_s", 0) / wall, 3),
           "post_s_per_fg_mp": round(t.get("post_s", 0) / max(fg_mp, 1e-9), 2), "threads": args.threads,
           "postprocess": lm.config.postprocess, "torch": torch.__version__, "python": platform.python_version(),
           "cpu": platform.processor() or platform.machine()}
    print("| side | objects | fg MP | wall s | network s | post-processing s | post share | post s / fg MP |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {args.side} | {row['objects']} | {fg_mp:.2f} | {wall:.1f} | {row['infer_s']:.1f} | {row['post_s']:.1f} "
          f"| {row['post_share']:.1%} | {row['post_s_per_fg_mp']:.1f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
