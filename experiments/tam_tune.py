"""Choose a TAM model's post-processing (clustering bandwidth and method, foreground threshold) on the VALIDATION split.

The network runs once per validation image; every setting is then scored from the same
outputs by mean symmetric best Dice. The test split is never read.

    python experiments/tam_tune.py --model RUN/model --data DATA [--write]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from pathseg.instances import PostProcess, instances_from_probs
from pathseg.losses import WeightMapCache, WeightMapConfig
from pathseg.metrics import iou, sbd
from pathseg.models import load_model
from pathseg.models.checkpoint import CONFIG_FILE
from pathseg.tiling import InferenceOptions, predict_probs
from pathseg.train.tam import dataset_splits, load_images

BANDWIDTHS = (0.5, 0.75, 1.0, 1.25, 1.5)
FG_THRESHOLDS = (0.4, 0.5, 0.6)
MIN_AREAS = (30, 100, 250)  # px at 0.25 µm/px; 250 px (15.6 µm²) is the smallest synthetic TAM


def main() -> None:
    """Sweep, print a table, optionally write the best setting into the model's config.json."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="store the best setting in the model's config.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    val = load_images(dataset_splits(args.data)["val"], "baseline", WeightMapConfig(), WeightMapCache(None))
    base = PostProcess.from_dict(lm.config.postprocess)
    mult = int(getattr(lm.net, "required_multiple", 1))
    outputs = []
    for it in val:
        window = -(-(max(it.image.shape[:2]) + 64) // mult) * mult
        outputs.append(predict_probs(lm.net, it.image, lm.config.mean, lm.config.std,
                                     InferenceOptions(window=window, halo=32, batch_size=1, multiple=mult)))
    grid = [dict(fg_threshold=f) for f in FG_THRESHOLDS]
    if base.embed_dim:
        # Smaller clusters than min_area_px join the TAM they touch: it also sets how coarse the split is.
        grid = [dict(fg_threshold=f, bandwidth=b, cluster=c, min_area_px=a) for f in FG_THRESHOLDS for b in BANDWIDTHS
                for c in ("meanshift", "hdbscan") for a in MIN_AREAS if c == "meanshift" or b == 1.0]
    rows = []
    for g in grid:
        pp = dataclasses.replace(base, **g)
        t0 = time.perf_counter()
        preds = [instances_from_probs(p, pp) for p in outputs]
        rows.append(dict(g, sbd=float(np.mean([sbd(it.labels, q) for it, q in zip(val, preds)])),
                         iou=float(np.mean([iou(it.labels > 0, q > 0) for it, q in zip(val, preds)])),
                         seconds=round(time.perf_counter() - t0, 2)))
        print(json.dumps(rows[-1]), flush=True)
    best = max(rows, key=lambda r: r["sbd"])
    print("best on validation:", json.dumps(best))
    if args.write:
        path = Path(lm.path) / CONFIG_FILE
        cfg = json.loads(path.read_text())
        cfg["postprocess"].update({k: v for k, v in best.items() if k in ("fg_threshold", "bandwidth", "cluster", "min_area_px")})
        cfg["training"]["postprocess_tuned_on_validation"] = {"grid": rows, "best": best}
        path.write_text(json.dumps(cfg, indent=2) + "\n")
        print(f"written to {path}")


if __name__ == "__main__":
    main()
