"""Partial-annotation ablation: weighted-background loss vs plain CE at F = 1.0, 0.5, 0.25.

Trains six small nuclei models on monuseg/train with `pathseg train nuclei`, evaluates each
on monuseg/test with `pathseg evaluate`, and writes docs/results/partial_ablation.{md,json}.
Nothing is tuned on the test split: every setting is fixed before the first run.

    python experiments/partial_ablation.py --data ../shared/data/monuseg --runs runs/ablation
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = ["dice", "precision", "recall", "aji", "pq", "f1_detection"]


def main() -> None:
    """Run (or resume) every training and evaluation, then write the table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, required=True, help="the monuseg folder (train/ and test/)")
    ap.add_argument("--runs", type=Path, default=Path("runs/ablation"))
    ap.add_argument("--fractions", default="1.0,0.5,0.25")
    ap.add_argument("--losses", default="weighted_ce,ce")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "partial_ablation")
    a = ap.parse_args()
    results = []
    for frac in a.fractions.split(","):
        for loss in a.losses.split(","):
            run = a.runs / f"{loss}-F{frac}"
            train = [sys.executable, "-m", "pathseg", "train", "nuclei", "--data", str(a.data / "train"), "--out", str(run),
                     "--partial-fraction", frac, "--loss", loss, "--steps", str(a.steps), "--width", str(a.width),
                     "--lr-decay-every", str(max(1, a.steps // 20)), "--ckpt-every", "100", "--seed", "0",
                     "--threads", str(a.threads)]
            t0 = time.perf_counter()
            if not (run / "model" / "model.safetensors").is_file():
                subprocess.run(train, check=True)
            train_s = time.perf_counter() - t0
            ev = run / "eval_test.json"
            if not ev.is_file():
                subprocess.run([sys.executable, "-m", "pathseg", "evaluate", "--model", str(run), "--data",
                                str(a.data / "test"), "--json", str(ev)], check=True)
            summary = json.loads(ev.read_text())["summary"]
            row = {"fraction": float(frac), "loss": loss, "train_s": round(train_s, 1), "command": " ".join(["pathseg", *train[3:]])}
            row.update({m: summary[m]["mean"] for m in METRICS})
            row.update({m + "_std": summary[m]["std"] for m in METRICS})
            results.append(row)
            print(json.dumps(row), flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    lines = ["| F | loss | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for r in results:
        cells = " | ".join(f"{r[m]:.3f} ({r[m + '_std']:.3f})" for m in METRICS)
        lines.append(f"| {r['fraction']} | {r['loss']} | {cells} |")
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
