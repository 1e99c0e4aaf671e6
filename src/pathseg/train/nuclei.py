"""`pathseg train nuclei`: the nuclei paper's recipe, resumable, with validation."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pathseg._version import __version__
from pathseg.errors import InputError
from pathseg.instances import PostProcess, instances_from_probs
from pathseg.io import list_samples, read_image, read_label
from pathseg.losses import create_loss, l2_penalty
from pathseg.metrics import evaluate_pair
from pathseg.models import ModelConfig, create_model
from pathseg.tiling import (
    InferenceOptions,
    autocast_context,
    pick_device,
    predict_probs,
)
from pathseg.train.augment import AugmentConfig, augment
from pathseg.train.checkpointing import (
    keep_record,
    load_training_state,
    open_run,
    publish_final,
)
from pathseg.train.patches import (
    PreparedImage,
    WeightConfig,
    patch_grid,
    prepare_dataset,
)

log = logging.getLogger(__name__)

# Settings that may change when a run is resumed (longer training, other reporting cadence).
_RESUMABLE = {"steps", "val_every", "ckpt_every", "device", "threads"}


@dataclass
class TrainConfig:
    """Every setting of a nuclei training run; saved as train_config.json in the run folder."""

    data: list[str]
    out: str
    val: str | None = None
    partial_fraction: float = 1.0
    loss: str = "weighted_ce"  # or "ce"
    width: int = 16
    levels: int = 5
    steps: int = 20000
    batch_size: int = 8
    lr: float = 1e-3
    lr_decay: float = 0.95
    lr_decay_every: int = 1000
    lr_min: float = 1e-5
    gamma: float = 1e-5  # L2 weight of the conv weights
    patch: int = 256
    stride: int = 128
    mpp: float = 0.25
    seed: int = 0
    precision: str = "auto"  # bf16 autocast on CUDA, fp32 on CPU (see autocast_context)
    device: str = "auto"
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    val_every: int = 500
    ckpt_every: int = 250
    weights: WeightConfig = field(default_factory=WeightConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict."""
        return dataclasses.asdict(self)


def _lr_at(cfg: TrainConfig, step: int) -> float:
    return max(cfg.lr_min, cfg.lr * cfg.lr_decay ** (step // cfg.lr_decay_every))


def _batch(items: list[PreparedImage], index: list[tuple[int, int, int]], cfg: TrainConfig, step: int):
    # One generator per step, seeded by (seed, step): a resumed run draws the same patches
    # and augmentations as an uninterrupted one.
    rng = np.random.default_rng([cfg.seed, step])
    picks = rng.integers(len(index), size=cfg.batch_size)
    xs, ts, ws = [], [], []
    for p in picks:
        i, y, x = index[p]
        it = items[i]
        sl = (slice(y, y + cfg.patch), slice(x, x + cfg.patch))
        img, tgt, wgt = augment(it.image[sl], it.target[sl], it.weight[sl], rng, cfg.augment)
        xs.append(img)
        ts.append(tgt)
        ws.append(wgt)
    return np.stack(xs), np.stack(ts), np.stack(ws)


def _validate(net, mcfg: ModelConfig, val: list[tuple[str, np.ndarray, np.ndarray]], device) -> dict[str, float]:
    net.eval()
    pp = PostProcess.from_dict(mcfg.postprocess)
    rows = []
    for _, image, labels in val:
        probs = predict_probs(net, image, mcfg.mean, mcfg.std, InferenceOptions(device=str(device)))
        rows.append(evaluate_pair(labels, instances_from_probs(probs, pp), ["dice", "aji", "pq"]))
    net.train()
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def train_nuclei(cfg: TrainConfig, progress: Callable[[int, int, dict], None] | None = None) -> Path:
    """Train (or resume) a nuclei model; returns the folder of the final model."""
    run = open_run(cfg.out, cfg.to_dict(), _RESUMABLE, cfg.threads, cfg.seed)
    device = pick_device(cfg.device)

    items: list[PreparedImage] = []
    for d in cfg.data:
        items += prepare_dataset(d, cfg.partial_fraction, cfg.seed, cfg.weights, cfg.mpp)
    index = [(i, y, x) for i, it in enumerate(items) for y, x in patch_grid(it, cfg.patch, cfg.stride)]
    if not index:
        raise InputError(f"{', '.join(cfg.data)}: no {cfg.patch}-px patch has enough annotated nuclei and background")
    val = []
    if cfg.val:
        val = [(s.name, read_image(s.image)[0], read_label(s.label)) for s in list_samples(cfg.val)]
    log.info("%d training images, %d patches, %d validation images", len(items), len(index), len(val))
    (run / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

    net = create_model("unet", in_channels=3, num_classes=3, width=cfg.width, levels=cfg.levels).to(device)
    net = net.to(memory_format=torch.channels_last)
    loss_fn = create_loss(cfg.loss)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    mcfg = ModelConfig(
        arch="unet",
        arch_kwargs=dict(net.config),
        mpp=cfg.mpp,
        postprocess=dataclasses.asdict(PostProcess()),
        training={"config": cfg.to_dict(), "n_patches": len(index), "pathseg_version": __version__},
    )
    state = load_training_state(run / "checkpoint", net, opt) or {"step": 0, "best": None, "history": [], "seconds": 0.0}
    if state["step"]:
        log.info("resuming %s at step %d", run, state["step"])
    precision = cfg.precision
    mean = torch.tensor(mcfg.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(mcfg.std, device=device).view(1, 3, 1, 1) * 255

    net.train()
    t0 = time.perf_counter() - state["seconds"]
    running = []
    step = state["step"]
    while step < cfg.steps:
        for g in opt.param_groups:
            g["lr"] = _lr_at(cfg, step)
        x, t, w = _batch(items, index, cfg, step)
        xt = torch.from_numpy(x).to(device).permute(0, 3, 1, 2).float()
        xt = ((xt - mean) / std).contiguous(memory_format=torch.channels_last)
        tt = torch.from_numpy(t).long().to(device)
        wt = torch.from_numpy(w).to(device)
        with autocast_context(device, precision):
            logits = net(xt)
        loss = loss_fn(logits, tt, wt)
        total = loss + cfg.gamma * l2_penalty(net)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        step += 1
        running.append(loss.item())
        record: dict[str, Any] = {}
        # Validation follows its own schedule only, so a run stopped and resumed selects its
        # best model from exactly the same evaluations as an uninterrupted one.
        do_val = bool(val) and step % cfg.val_every == 0
        if do_val or step % cfg.ckpt_every == 0 or step == cfg.steps:
            record = {"step": step, "loss": float(np.mean(running)), "lr": _lr_at(cfg, step - 1), "seconds": time.perf_counter() - t0}
            running = []
            if do_val:
                record["val"] = _validate(net, mcfg, val, device)
            keep_record(run, net, mcfg, opt, state, record, "aji")
        if progress is not None:
            progress(step, cfg.steps, record)

    return publish_final(run, net, mcfg, state)
