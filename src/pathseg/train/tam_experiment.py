"""`pathseg experiment tam`: every model x strategy trained and scored on one TAM dataset (the paper's Table 1)."""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageDraw

from pathseg._version import __version__
from pathseg.errors import InputError
from pathseg.losses import WeightMapCache, WeightMapConfig
from pathseg.models import load_model
from pathseg.tiling import pick_device
from pathseg.train.tam import ARCHS, STRATEGIES, TamTrainConfig, dataset_splits, evaluate_images, load_images, train_tam

log = logging.getLogger(__name__)

ALIASES = {"deeplab": "deeplabv3", "deeplab-v3": "deeplabv3", "deeplabv3": "deeplabv3", "unet": "unet", "segnet": "segnet"}
LABELS = {"unet": "UNet", "segnet": "SegNet", "deeplabv3": "DeepLab-v3", "baseline": "baseline",
          "weights": "per-pixel weights", "instance": "instance"}


def parse_list(text: str, allowed: dict[str, str] | tuple[str, ...], what: str) -> list[str]:
    """Comma-separated names, checked against `allowed` (a tuple, or aliases -> names)."""
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    lookup = allowed if isinstance(allowed, dict) else {a: a for a in allowed}
    bad = [n for n in names if n not in lookup]
    if bad or not names:
        raise InputError(f"--{what} {text}: unknown {', '.join(bad) or 'empty list'}; choose from {', '.join(sorted(set(lookup.values())))}")
    return list(dict.fromkeys(lookup[n] for n in names))


def run_experiment(data: str | Path, out: str | Path, models: list[str], strategies: list[str],
                   base: dict[str, Any] | None = None, figure_images: int = 2,
                   progress: Callable[[str, int, int, dict], None] | None = None) -> dict[str, Any]:
    """Train every model x strategy (resuming finished runs), score on the test split, write table and figure."""
    out = Path(out)
    base = dict(base or {})
    for m in models:
        if m not in ARCHS:
            raise InputError(f"unknown model {m}")
    for s in strategies:
        if s not in STRATEGIES:
            raise InputError(f"unknown strategy {s}")
    splits = dataset_splits(data, base.get("groups"), base.get("seed", 0))
    if not splits["test"]:
        raise InputError(f"{data}: no test images (a test/ folder, or a flat folder split 70/15/15)")
    rows, preds = [], {}
    test = None
    for arch in models:
        for strategy in strategies:
            name = f"{arch}-{strategy}"
            cfg = TamTrainConfig(data=str(data), out=str(out / "runs" / name), arch=arch, strategy=strategy, **base)
            t0 = time.perf_counter()
            final = _finished(cfg)
            if final is None:
                final = train_tam(cfg, (lambda s, n, r, _name=name: progress(_name, s, n, r)) if progress else None)
            train_s = time.perf_counter() - t0
            lm = load_model(final)
            if test is None:
                test = load_images(splits["test"], "baseline", WeightMapConfig(), WeightMapCache(None))
            t1 = time.perf_counter()
            scores = evaluate_images(lm.net, lm.config, test, pick_device(cfg.device), keep=True)
            infer_s = (time.perf_counter() - t1) / len(test)
            selected = lm.config.training.get("selected", {})
            row = {"model": arch, "strategy": strategy, "iou_mean": float(np.mean(scores["iou_per_image"])),
                   "iou_std": float(np.std(scores["iou_per_image"])), "sbd_mean": float(np.mean(scores["sbd_per_image"])),
                   "sbd_std": float(np.std(scores["sbd_per_image"])), "n_test": len(test),
                   "steps_selected": selected.get("step"), "val_at_selection": selected.get("val"),
                   "train_seconds_this_call": round(train_s, 1), "seconds_per_test_image": round(infer_s, 3),
                   "run": str(Path(final).resolve().relative_to(out.resolve())) if out.resolve() in Path(final).resolve().parents else str(final),
                   "iou_per_image": scores["iou_per_image"], "sbd_per_image": scores["sbd_per_image"]}
            rows.append(row)
            preds[name] = scores["predictions"][:figure_images]
            log.info("%s: IoU %.3f SBD %.3f", name, row["iou_mean"], row["sbd_mean"])
    assert test is not None
    # Rows of earlier calls on the same folder (other models or strategies) are kept, in a fixed order.
    old_path = out / "tam_table.json"
    if old_path.is_file():
        try:
            old_rows = json.loads(old_path.read_text()).get("rows", [])
        except (OSError, ValueError):
            old_rows = []
        mine = {(r["model"], r["strategy"]) for r in rows}
        rows = [r for r in old_rows if (r.get("model"), r.get("strategy")) not in mine] + rows
        rows.sort(key=lambda r: (ARCHS.index(r["model"]), STRATEGIES.index(r["strategy"])))
    result = {"data": str(data), "n_test": len(test), "rows": rows, "base_config": base,
              "pathseg_version": __version__, "torch_version": torch.__version__,
              "python_version": platform.python_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out.mkdir(parents=True, exist_ok=True)
    (out / "tam_table.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "tam_table.md").write_text(format_table(rows) + "\n")
    write_figure(out / "tam_figure.png", test[:figure_images], preds)
    return result


def _finished(cfg: TamTrainConfig) -> Path | None:
    """The published model of a run made with these settings (e.g. trained elsewhere), else None."""
    run = Path(cfg.out)
    saved = run / "train_config.json"
    if not (run / "model" / "config.json").is_file() or not saved.is_file():
        return None
    from pathseg.errors import OutputError
    from pathseg.train.tam import _RESUMABLE

    # Paths and machine settings may differ (a run trained on a GPU machine, scored here); the recipe may not.
    old, new = json.loads(saved.read_text()), json.loads(json.dumps(cfg.to_dict()))
    skip = _RESUMABLE | {"data", "out"}
    diff = sorted(k for k in new if k not in skip and old.get(k) != new[k])
    if diff:
        raise OutputError(f"{run}: holds a run with other settings ({', '.join(diff)}); choose another --out")
    return run / "model"


def format_table(rows: list[dict[str, Any]]) -> str:
    """The paper's Table 1 layout: IoU and SBD mean and std (in %) per model and strategy."""
    lines = ["| model | strategy | IoU mean | IoU std | SBD mean | SBD std |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {LABELS[r['model']]} | {LABELS[r['strategy']]} | {100 * r['iou_mean']:.2f} | {100 * r['iou_std']:.2f} "
                     f"| {100 * r['sbd_mean']:.2f} | {100 * r['sbd_std']:.2f} |")
    return "\n".join(lines)


def colour_instances(labels: np.ndarray, seed: int = 7) -> np.ndarray:
    """RGB image of an instance map: one random bright colour per id, black background."""
    rng = np.random.default_rng(seed)
    n = int(labels.max(initial=0))
    lut = np.concatenate([np.zeros((1, 3)), rng.uniform(60, 255, (n, 3))]).astype(np.uint8)
    return lut[labels]


def write_figure(path: Path, images: list[Any], preds: dict[str, list[np.ndarray]], panel: int = 256) -> None:
    """One row per test image: original, ground truth, then every model's instances colour-coded."""
    names = list(preds)
    cols = 2 + len(names)
    title_h = 18
    fig = Image.new("RGB", (cols * panel, len(images) * (panel + title_h)), "white")
    draw = ImageDraw.Draw(fig)
    for r, it in enumerate(images):
        y = r * (panel + title_h)
        tiles = [("original", it.image), ("ground truth", colour_instances(it.labels))]
        tiles += [(n, colour_instances(preds[n][r])) for n in names if r < len(preds[n])]
        for c, (title, arr) in enumerate(tiles):
            im = Image.fromarray(arr).resize((panel, panel), Image.NEAREST if arr is not it.image else Image.BILINEAR)
            fig.paste(im, (c * panel, y + title_h))
            draw.text((c * panel + 4, y + 3), title, fill=(0, 0, 0))
    fig.save(path)


def base_config(args: dict[str, Any]) -> dict[str, Any]:
    """The TamTrainConfig fields given on the command line (None = the recipe's default)."""
    names = {f.name for f in dataclasses.fields(TamTrainConfig)}
    return {k: v for k, v in args.items() if v is not None and k in names}
