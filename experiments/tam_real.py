"""IoU and SBD of a TAM model on the real IHC sets in ../shared/data (deepliif_ki67/test, nuclick_ihc_lossy).

    python experiments/tam_real.py --model tam-ihc --data ../shared/data --out docs/results/tam_real.json

deepliif_ki67/test: the ground truth is the Ki67-positive (brown DAB) cells only (class 1), since a
TAM model finds DAB-positive cells; the tiles' pixel size is not stated, so they are used as they are
(the model's own scale). nuclick_ihc_lossy: every annotated lymphocyte; the tiles are 2x upsampled
LYON19 crops (0.24 µm/px originals, so about 0.12 µm/px), which the pipeline resamples to the model's
scale. Scores are also given over the images that hold at least one annotated cell.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from pathseg.io import list_samples, read_image, read_label
from pathseg.metrics import iou, sbd
from pathseg.models import load_model
from pathseg.pipeline import segment_image

SETS = {
    # name: (folder, pixel size passed to the pipeline (None = the model's), class kept or None = all)
    "deepliif_ki67/test": ("deepliif_ki67/test", None, 1),
    "nuclick_ihc_lossy": ("nuclick_ihc_lossy/test", 0.12, None),
}


def _truth(sample, keep_class: int | None) -> np.ndarray:
    labels = read_label(sample.label).astype(np.int64)
    if keep_class is None:
        return labels
    classes = read_label(sample.label.parent.parent / "classes" / sample.label.name)
    return np.where(classes == keep_class, labels, 0)


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}


def evaluate_set(lm, root: Path, name: str) -> dict:
    """Per-image and summary IoU/SBD of one real set."""
    folder, mpp, keep = SETS[name]
    rows = []
    for s in list_samples(root / folder):
        image, _ = read_image(s.image)
        truth = _truth(s, keep)
        t0 = time.perf_counter()
        res = segment_image(image, lm, mpp=mpp)
        rows.append({"image": s.name, "n_true": int(len(np.unique(truth)) - 1), "n_pred": int(res.labels.max()),
                     "iou": float(iou(truth > 0, res.labels > 0)), "sbd": float(sbd(truth, res.labels)),
                     "seconds": round(time.perf_counter() - t0, 2)})
    annotated = [r for r in rows if r["n_true"] > 0]
    return {"images": rows, "mpp_passed": mpp, "class_kept": keep,
            "all": {"iou": _stats([r["iou"] for r in rows]), "sbd": _stats([r["sbd"] for r in rows])},
            "annotated": {"iou": _stats([r["iou"] for r in annotated]), "sbd": _stats([r["sbd"] for r in annotated])}}


def main() -> None:
    """Evaluate and write JSON plus a Markdown table to stdout."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tam-ihc")
    ap.add_argument("--data", default="../shared/data", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    lm = load_model(args.model)
    result = {"model": lm.name, "sha256": lm.sha256, "sets": {n: evaluate_set(lm, args.data, n) for n in SETS}}
    print("| set | images | IoU (all) | SBD (all) | IoU (annotated) | SBD (annotated) |\n|---|---|---|---|---|---|")
    for n, r in result["sets"].items():
        a, b = r["all"], r["annotated"]
        print(f"| {n} | {a['iou']['n']} | {a['iou']['mean']:.3f} ± {a['iou']['std']:.3f} | {a['sbd']['mean']:.3f} ± "
              f"{a['sbd']['std']:.3f} | {b['iou']['mean']:.3f} ± {b['iou']['std']:.3f} | {b['sbd']['mean']:.3f} ± "
              f"{b['sbd']['std']:.3f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
