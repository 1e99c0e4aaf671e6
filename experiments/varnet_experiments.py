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


def synthetic(runs: Path, n: int, size: int, figs: Path, scenarios: list[str]) -> list[dict]:
    """Held-out synthetic metrics per scenario model, and one figure each."""
    rows = []
    for name in scenarios:
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
        cfg = lm.config.training.get("config", lm.config.training)
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


def transfer(runs: Path, window: int, halo: int, figs: Path, only: set[str] | None = None) -> list[dict]:
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
        if only and not any(o in label for o in only):
            continue
        if isinstance(source, Path) and not source.is_dir():
            print(f"skip {label}: no model in {source}")
            continue
        lm = load_model(source, torch.device("cpu"))
        loaded[label] = lm
        # The reference runs with its own defaults (512/64), as in its model card.
        w, h = (512, 64) if source == "nuclei-he" else (window, halo)
        opts = InferenceOptions(window=w, halo=h, batch_size=1, device="cpu", precision="fp32",
                                multiple=getattr(lm.net, "required_multiple", 1))
        t0 = time.perf_counter()
        res = evaluate_dataset(lm, MONUSEG, opts)
        summ = res["summary"]["all"] if "all" in res["summary"] else res["summary"]
        rows.append({"model": label, "summary": summ, "seconds": time.perf_counter() - t0,
                     "window": w, "halo": h, "normalise": lm.config.normalise.get("kind", "none")})
        print(label, res["table"])
    figure_panels = []
    for label in ("varnet (synthetic he-nuclei)", "UNet (synthetic he-nuclei)"):
        source = models[label]
        if label in loaded or source.is_dir():  # the figure always shows both when they exist
            figure_panels.append(loaded.get(label) or load_model(source, torch.device("cpu")))
    sample = list_samples(MONUSEG)[0]
    image, _ = read_image(sample.image)
    crop = image[:300, :300]
    truth = read_label(sample.label)[:300, :300] > 0
    panels = [crop] + [_u8((segment_image(crop, lm, mpp=0.25).labels > 0).astype(np.float32)) for lm in figure_panels]
    panels.append(_u8(truth.astype(np.float32)))
    Image.fromarray(_row(panels)).save(figs / "varnet_transfer_monuseg.png", optimize=True)
    return rows


def _f(v: object, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def write_markdown(results: Path) -> Path:
    """Markdown tables of both experiments from their JSON files (results/varnet_experiments.md)."""
    lines = ["# Variational network: measured results", "",
             "Made by `python experiments/varnet_experiments.py --runs RUNS --out docs`.", ""]
    syn = results / "varnet_synthetic.json"
    if syn.is_file():
        lines += ["## Held-out synthetic images (300x300, seeds 20,000,000+)", "",
                  "| scenario | images | PSNR u0 (dB) | PSNR u_T (dB) | mask accuracy | mask Dice | training |",
                  "|---|---|---|---|---|---|---|"]
        for r in json.loads(syn.read_text()):
            lines.append(f"| {r['scenario']} | {r['n_images']} | {_f(r['psnr_u0'], 2)} | {_f(r['psnr_uT'], 2)} | "
                         f"{_f(r['mask_accuracy'], 4)} | {_f(r['mask_dice'])} | {r['steps']} steps, batch "
                         f"{r['batch_size']} of {r['train_size']}^2, lr {r['lr']} |")
        lines.append("")
    tr = results / "varnet_transfer.json"
    if tr.is_file():
        lines += ["## Transfer to real H&E: MoNuSeg 2018 test (14 images)", "",
                  "| model | pixel Dice | object F1 (IoU>=0.5) | AJI | PQ | window/halo | colour normalisation |",
                  "|---|---|---|---|---|---|---|"]
        for r in json.loads(tr.read_text()):
            m = r["summary"]

            def cell(k: str) -> str:
                v = m.get(k)
                return f"{v['mean']:.3f} ± {v['std']:.3f}" if isinstance(v, dict) else _f(v)

            lines.append(f"| {r['model']} | {cell('dice')} | {cell('f1_detection')} | {cell('aji')} | {cell('pq')} | "
                         f"{r['window']}/{r['halo']} | {r['normalise']} |")
        lines.append("")
    path = results / "varnet_experiments.md"
    path.write_text("\n".join(lines))
    return path


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
    ap.add_argument("--scenarios", default="", help="Synthetic: comma list of scenarios (default: all).")
    ap.add_argument("--only", default="", help="Transfer: evaluate only models whose label contains one of these (comma list).")
    a = ap.parse_args()
    figs = a.out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    (a.out / "results").mkdir(parents=True, exist_ok=True)
    skip = set(a.skip.split(","))
    if "synthetic" not in skip:
        path = a.out / "results" / "varnet_synthetic.json"
        rows = synthetic(a.runs, a.n, a.size, figs, a.scenarios.split(",") if a.scenarios else SCENARIOS)
        # Merge by scenario, in the canonical order: scenarios can be evaluated in separate runs.
        old = json.loads(path.read_text()) if path.is_file() else []
        merged = {r["scenario"]: r for r in old} | {r["scenario"]: r for r in rows}
        ordered = [merged[k] for k in SCENARIOS if k in merged]
        path.write_text(json.dumps(ordered, indent=2) + "\n")
    if "transfer" not in skip:
        path = a.out / "results" / "varnet_transfer.json"
        rows = transfer(a.runs, a.window, a.halo, figs, set(filter(None, a.only.split(","))))
        # Merge by model label: models can be evaluated in separate runs (--only).
        old = json.loads(path.read_text()) if path.is_file() else []
        merged = {r["model"]: r for r in old} | {r["model"]: r for r in rows}
        order = ["varnet (synthetic he-nuclei)", "UNet (synthetic he-nuclei)", "nuclei-he (built-in, real MoNuSeg train)"]
        ordered = sorted(merged.values(), key=lambda r: order.index(r["model"]) if r["model"] in order else len(order))
        path.write_text(json.dumps(ordered, indent=2, default=str) + "\n")
    print(f"written {write_markdown(a.out / 'results')}")


if __name__ == "__main__":
    main()
