"""IoU and SBD of one TAM model on the TEST split of a TAM dataset, with two inference protocols.

"one window": each image through the network in a single window (the protocol of
`pathseg experiment tam`); "segment": `pathseg segment`'s default sliding windows (512 px, 64 halo),
what a user gets on images larger than one window.

    python experiments/tam_test.py --model tam-ihc --data DATA --out docs/results/tam_ihc_test.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from pathseg.losses import WeightMapCache, WeightMapConfig
from pathseg.metrics import iou, sbd
from pathseg.models import load_model
from pathseg.pipeline import segment_image
from pathseg.tiling import pick_device
from pathseg.train.tam import dataset_splits, evaluate_images, load_images


def main() -> None:
    """Score and print a Markdown table; optionally write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tam-ihc")
    ap.add_argument("--data", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    test = load_images(dataset_splits(args.data)["test"], "baseline", WeightMapConfig(), WeightMapCache(None))
    one = evaluate_images(lm.net, lm.config, test, pick_device("cpu"))
    seg_iou, seg_sbd, areas = [], [], []
    for it in test:
        res = segment_image(it.image, lm, mpp=lm.config.mpp)
        seg_iou.append(float(iou(it.labels > 0, res.labels > 0)))
        seg_sbd.append(float(sbd(it.labels, res.labels)))
        areas += list(res.table["area_um2"])
    result = {"model": lm.name, "sha256": lm.sha256, "n_test": len(test),
              "one_window": {"iou_mean": float(np.mean(one["iou_per_image"])), "iou_std": float(np.std(one["iou_per_image"])),
                             "sbd_mean": float(np.mean(one["sbd_per_image"])), "sbd_std": float(np.std(one["sbd_per_image"]))},
              "segment": {"iou_mean": float(np.mean(seg_iou)), "iou_std": float(np.std(seg_iou)),
                          "sbd_mean": float(np.mean(seg_sbd)), "sbd_std": float(np.std(seg_sbd))},
              "predicted_area_um2_quantiles": dict(zip(("p5", "p25", "p50", "p75", "p95"),
                                                       np.percentile(areas, [5, 25, 50, 75, 95]).round(1).tolist()))}
    print("| protocol | IoU | SBD |\n|---|---|---|")
    for k in ("one_window", "segment"):
        r = result[k]
        print(f"| {k} | {100 * r['iou_mean']:.2f} ± {100 * r['iou_std']:.2f} | {100 * r['sbd_mean']:.2f} ± {100 * r['sbd_std']:.2f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
