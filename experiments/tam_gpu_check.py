"""CUDA and mixed-precision inference of tam-ihc against the CPU, on 8 synthetic test images (run on a GPU machine).

    python experiments/tam_gpu_check.py NATIVE_DATA    # a synthetic TAM dataset written with upscale=1
"""

from __future__ import annotations

import sys

import numpy as np

from pathseg.losses import WeightMapCache, WeightMapConfig
from pathseg.metrics import iou, sbd
from pathseg.models import load_model
from pathseg.pipeline import segment_image
from pathseg.tiling import InferenceOptions
from pathseg.train.tam import dataset_splits, load_images
from pathseg.train.tam_data import upscale_dataset


def main() -> None:
    """Print IoU, SBD and seconds per image for each device and precision."""
    upscale_dataset(sys.argv[1] if len(sys.argv) > 1 else ".tamdata", "/tmp/tam-gpu-check")
    test = load_images(dataset_splits("/tmp/tam-gpu-check")["test"][:8], "baseline", WeightMapConfig(), WeightMapCache(None))
    for dev, prec in (("cpu", "fp32"), ("cuda", "fp32"), ("cuda", "bf16"), ("cuda", "fp16")):
        lm = load_model("tam-ihc", device=dev)
        rows = []
        for it in test:
            res = segment_image(it.image, lm, mpp=0.25, options=InferenceOptions(device=dev, precision=prec))
            rows.append((iou(it.labels > 0, res.labels > 0), sbd(it.labels, res.labels), res.timings["infer_s"],
                         res.timings["postprocess_s"]))
        m = np.mean(rows, 0)
        print(f"{dev} {prec}: IoU {m[0]:.4f} SBD {m[1]:.4f} infer {m[2]:.3f}s post {m[3]:.3f}s per 512^2 image", flush=True)


if __name__ == "__main__":
    main()
