"""Inference speed of the window schemes, and what each stage of `segment` costs.

Runs the built-in nuclei model (or --model) over one large RGB image (default: a 2x2
mosaic of MoNuSeg test images = 2000x2000, or a synthetic image when ../shared/data is
absent), in one process, with each scheme timed `--repeats` times (median reported).
Schemes: the paper's 256-px windows keeping the central 128 (4x overcompute), and larger
windows with a 64/96-px halo. Also reports how many pixels' argmax differ from the paper's
scheme and the post-processing / measurement / writing times of the full pipeline.

    python benchmarks/bench_inference.py --out docs/results/bench_inference.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pathseg.instances import PostProcess, instances_from_probs
from pathseg.io import read_image, write_geojson, write_label_map, write_overlay, write_table_csv
from pathseg.measure import measure_instances
from pathseg.models import load_model
from pathseg.tiling import InferenceOptions, predict_probs

SCHEMES = [(256, 64, 16), (512, 64, 4), (768, 96, 2), (1024, 96, 1)]  # window, halo, batch size
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "monuseg" / "test" / "images"


def _image() -> tuple[np.ndarray, str]:
    files = sorted(SHARED.glob("*.png"))[:4] if SHARED.is_dir() else []
    if len(files) == 4:
        t = [read_image(f)[0][:1000, :1000] for f in files]
        return np.concatenate(
            [np.concatenate(t[:2], 1), np.concatenate(t[2:], 1)], 0), "2x2 mosaic of MoNuSeg test images"
    from tests.conftest import synthetic_nuclei

    return synthetic_nuclei(2000, n=3000, seed=0)[0], "synthetic 2000x2000"


def main() -> None:
    """Time every scheme and the pipeline stages; print and save a JSON record."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="nuclei-he")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    lm = load_model(a.model)
    image, what = _image()
    mp = image.shape[0] * image.shape[1] / 1e6
    ref = None
    rows = []
    for window, halo, bs in SCHEMES:
        opts = InferenceOptions(window=window, halo=halo, batch_size=bs, device="cpu", precision="fp32")
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            probs = predict_probs(lm.net, image, lm.config.mean, lm.config.std, opts)
            times.append(time.perf_counter() - t0)
        arg = probs.argmax(0)
        ref = arg if ref is None else ref
        core = window - 2 * halo
        rows.append({
            "window": window, "halo": halo, "batch_size": bs, "median_s": statistics.median(times),
            "mp_per_s": mp / statistics.median(times), "overcompute": (window / core) ** 2,
            "argmax_differs_from_paper_scheme": float((arg != ref).mean()),
        })
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["median_s"]
    for r in rows:
        r["speedup_vs_paper"] = base / r["median_s"]
    # Stages after the network, on the default scheme's output.
    probs = predict_probs(lm.net, image, lm.config.mean, lm.config.std, InferenceOptions(device="cpu"))
    t0 = time.perf_counter()
    labels = instances_from_probs(probs, PostProcess.from_dict(lm.config.postprocess))
    t1 = time.perf_counter()
    table = measure_instances(labels, image, 0.25)
    t2 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        write_label_map(Path(d) / "l.png", labels)
        write_overlay(Path(d) / "o.png", image, labels)
        write_table_csv(Path(d) / "t.csv", table)
        write_geojson(Path(d) / "g.geojson", labels, table)
    t3 = time.perf_counter()
    stages = {"instances_s": t1 - t0, "measure_s": t2 - t1, "write_s": t3 - t2, "n_objects": int(labels.max())}
    print(json.dumps(stages))
    record = {"image": what, "shape": list(image.shape), "model": lm.name, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "schemes": rows, "stages": stages}
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
