"""Issue-4 experiments: the variational network on held-out synthetic scenes and on real MoNuSeg.

1. Synthetic: for every trained scenario model (<runs>/<scene>-varnet/model), PSNR of u0 and of
   u_T against the clean image g_u, and mask accuracy / Dice of m_T > 0.5 against g_m, on
   `--n` freshly generated 300x300 images with seeds 20_000_000 + i (never seen in training,
   which used seeds 0..n_train-1, nor in model selection, which used 10_000_000 + i).
2. Transfer: the he-nuclei models (variational network and UNet, both trained only on the
   synthetic he-nuclei scene) evaluated with `pathseg evaluate`'s code on
   ../shared/data/monuseg/test: pixel Dice, object F1 (IoU >= 0.5), AJI, PQ. The built-in
   nuclei-he (trained on real MoNuSeg train) is the reference row.
3. Figures: per scenario u0 | u_T | m_T | g_m; on a MoNuSeg test crop image | varnet | UNet | truth.

    python experiments/varnet_experiments.py --runs ../runs/v4 --out docs
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pathseg.evaluate import evaluate_dataset
from pathseg.io import list_samples, read_image, read_label
from pathseg.models import load_model
from pathseg.pipeline import segment_image
from pathseg.synth import generate, load_scene
from pathseg.tiling import InferenceOptions
from pathseg.train.varnet import evaluate_arrays

SCENARIOS = ["if-immune-tumour", "he-immune-rich", "he-tumour-nuclei", "he-nuclei"]
TEST_SEED = 20_000_000
MONUSEG = Path(__file__).resolve().parents[2] / "shared" / "data" / "monuseg" / "test"


def _u8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def _row(images: list[np.ndarray]) -> np.ndarray:
    h = images[0].shape[0]
    gap = np.full((h, 4, 3), 255, np.uint8)
    parts = []
    for i, im in enumerate(images):
        im = np.repeat(im[..., None], 3, 2) if im.ndim == 2 else im
        parts += ([gap] if i else []) + [im]
    return np.concatenate(parts, 1)


def synthetic(runs: Path, n: int, size: int, figs: Path) -> list[dict]:
    """Held-out synthetic metrics per scenario model, and one figure each."""
    rows = []
    for name in SCENARIOS:
        folder = runs / f"{name}-varnet" / "model"
        if not folder.is_dir():
            print(f"skip {name}: no model in {folder}")
            continue
        lm = load_model(folder, torch.device("cpu"))
        scene = load_scene(name)
        samples = [generate(scene, TEST_SEED + i, (size, size)) for i in range(n)]
        data = {"u0": np.stack([s.u0.transpose(2, 0, 1) for s in samples]),
                "g_u": np.stack([s.g_u.transpose(2, 0, 1) for s in samples]),
                "g_m": np.stack([s.g_m[None] for s in samples])}
        t0 = time.perf_counter()
        res = evaluate_arrays(lm.net, data, batch_size=4)
        seconds = time.perf_counter() - t0
        cfg = lm.config.training
        rows.append({"scenario": name, **res, "n_images": n, "size": size, "seconds_per_image": seconds / n,
                     "steps": cfg.get("steps"), "batch_size": cfg.get("batch_size"), "train_size": cfg.get("size"),
                     "lr": cfg.get("lr"), "zero_mean_u": cfg.get("zero_mean_u")})
        with torch.no_grad():
            u, m = lm.net.varnet(torch.from_numpy(data["u0"][:1]))
        s0 = samples[0]
        fig = _row([_u8(s0.u0), _u8(u[0].numpy().transpose(1, 2, 0)), _u8(m[0, 0].numpy()), _u8(s0.g_m)])
        Image.fromarray(fig).save(figs / f"varnet_{name}.png", optimize=True)
        print(name, {k: v for k, v in rows[-1].items() if isinstance(v, float)})
    return rows


def transfer(runs: Path, window: int, halo: int, figs: Path) -> list[dict]:
    """MoNuSeg test metrics of the synthetic-only models and of the built-in reference."""
    if not MONUSEG.is_dir():
        print(f"skip transfer: {MONUSEG} absent")
        return []
    rows = []
    models = {"varnet (synthetic he-nuclei)": runs / "he-nuclei-varnet" / "model",
              "UNet (synthetic he-nuclei)": runs / "he-nuclei-unet" / "model",
              "nuclei-he (built-in, real MoNuSeg train)": "nuclei-he"}
    loaded = {}
    for label, source in models.items():
        if isinstance(source, Path) and not source.is_dir():
            print(f"skip {label}: no model in {source}")
            continue
        lm = load_model(source, torch.device("cpu"))
        loaded[label] = lm
        opts = InferenceOptions(window=window, halo=halo, batch_size=1, device="cpu", precision="fp32",
                                multiple=getattr(lm.net, "required_multiple", 1))
        t0 = time.perf_counter()
        res = evaluate_dataset(lm, MONUSEG, opts)
        summ = res["summary"]["all"] if "all" in res["summary"] else res["summary"]
        rows.append({"model": label, "summary": summ, "seconds": time.perf_counter() - t0,
                     "window": window, "halo": halo, "normalise": lm.config.normalise.get("kind", "none")})
        print(label, res["table"])
    sample = list_samples(MONUSEG)[0]
    image, _ = read_image(sample.image)
    crop = image[:300, :300]
    truth = read_label(sample.label)[:300, :300] > 0
    panels = [crop]
    for label in ("varnet (synthetic he-nuclei)", "UNet (synthetic he-nuclei)"):
        if label in loaded:
            panels.append(_u8((segment_image(crop, loaded[label], mpp=0.25).labels > 0).astype(np.float32)))
    panels.append(_u8(truth.astype(np.float32)))
    Image.fromarray(_row(panels)).save(figs / "varnet_transfer_monuseg.png", optimize=True)
    return rows


def main() -> None:
    """Run both experiments and write JSON results and figures."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=Path, required=True, help="Folder holding <scene>-varnet/ and he-nuclei-unet/ runs.")
    ap.add_argument("--out", type=Path, default=Path("docs"))
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--size", type=int, default=300)
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--halo", type=int, default=32)
    ap.add_argument("--skip", default="", help="Comma list: synthetic,transfer")
    a = ap.parse_args()
    figs = a.out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    (a.out / "results").mkdir(parents=True, exist_ok=True)
    skip = set(a.skip.split(","))
    if "synthetic" not in skip:
        rows = synthetic(a.runs, a.n, a.size, figs)
        (a.out / "results" / "varnet_synthetic.json").write_text(json.dumps(rows, indent=2) + "\n")
    if "transfer" not in skip:
        rows = transfer(a.runs, a.window, a.halo, figs)
        (a.out / "results" / "varnet_transfer.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
