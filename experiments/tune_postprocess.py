"""Choose the instance-extraction thresholds of a model on a validation set (never a test set).

Runs the network once per validation image, then grid-searches `fg_threshold` and
`marker_threshold` of the watershed on the cached probabilities, picks the pair with the
best mean AJI, and (with --write) stores it in the model folder's config.json, as StarDist
stores its tuned thresholds beside the weights.

    python experiments/tune_postprocess.py --model runs/nuclei-he --val VAL_DIR [--write]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np

from pathseg.instances import PostProcess, instances_from_probs
from pathseg.io import list_samples, read_image, read_label
from pathseg.metrics import evaluate_pair
from pathseg.models import load_model
from pathseg.tiling import InferenceOptions, predict_probs

FG = (0.4, 0.5, 0.6)
MARKER = (0.4, 0.5, 0.6, 0.7)


def main() -> None:
    """Grid-search the thresholds and print (and optionally save) the best."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--val", type=Path, required=True)
    ap.add_argument("--write", action="store_true", help="store the chosen thresholds in the model's config.json")
    a = ap.parse_args()
    lm = load_model(a.model)
    cached = []
    for s in list_samples(a.val):
        image, _ = read_image(s.image)
        probs = predict_probs(lm.net, image, lm.config.mean, lm.config.std, InferenceOptions(device="cpu"))
        cached.append((probs, read_label(s.label)))
    base = PostProcess.from_dict(lm.config.postprocess)
    results = []
    for fg, mk in itertools.product(FG, MARKER):
        pp = dataclasses.replace(base, fg_threshold=fg, marker_threshold=mk)
        rows = [evaluate_pair(lab, instances_from_probs(p, pp), ["dice", "aji", "pq"]) for p, lab in cached]
        res = {"fg_threshold": fg, "marker_threshold": mk, **{k: float(np.mean([r[k] for r in rows])) for k in rows[0]}}
        results.append(res)
        print(json.dumps(res), flush=True)
    best = max(results, key=lambda r: r["aji"])
    print("best:", json.dumps(best))
    if a.write:
        cfg_path = lm.path / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["postprocess"] = dataclasses.asdict(dataclasses.replace(base, fg_threshold=best["fg_threshold"],
                                                                     marker_threshold=best["marker_threshold"]))
        cfg.setdefault("training", {})["postprocess_tuning"] = {"val": str(a.val), "grid": results, "chosen": best}
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
        print(f"written {cfg_path}")


if __name__ == "__main__":
    main()
