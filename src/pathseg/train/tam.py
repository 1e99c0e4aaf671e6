"""`pathseg train tam`: the TAM paper's recipe for one model and one strategy, resumable, with validation."""

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
from pathseg.io import check_pair, list_samples, read_image, read_label
from pathseg.losses import TamLoss, WeightMapCache, WeightMapConfig, separation_target
from pathseg.metrics import iou, sbd
from pathseg.models import ModelConfig, create_model
from pathseg.tiling import InferenceOptions, autocast_context, pick_device, predict_probs
from pathseg.train.checkpointing import keep_record, load_training_state, open_run, publish_final
from pathseg.train.tam_augment import TamAugmentConfig, colour_augment, sample_patch
from pathseg.train.tam_data import group_split, read_groups

log = logging.getLogger(__name__)

ARCHS = ("unet", "segnet", "deeplabv3")
STRATEGIES = ("baseline", "weights", "instance")
# Settings that may change when a run is resumed.
_RESUMABLE = {"steps", "val_every", "device", "threads", "early_stop", "workers", "time_limit_s", "val_images"}
OBJECTS_NAME = "TAM"
# DeepLab for sliding windows: atrous rates that fit the 28x28 features of a 224-px patch at
# output stride 8 (the paper's 12/24/36 mostly hit padding there), and no image-pooling branch,
# whose whole-window average made IoU depend on the window size (0.47 at 576 px, 0.63 at 256).
TAM_ARCH_DEFAULTS: dict[str, dict[str, Any]] = {"deeplabv3": {"atrous_rates": [4, 8, 12], "image_pooling": False}}


@dataclass
class TamTrainConfig:
    """Every setting of one TAM training run; saved as train_config.json in the run folder."""

    data: str
    out: str
    arch: str = "deeplabv3"
    strategy: str = "instance"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    embed_dim: int = 8
    delta_v: float = 0.5
    delta_d: float = 1.5
    bandwidth: float = 1.0  # mean-shift bandwidth at inference: 2 delta_v (see instances.cluster)
    cluster: str = "meanshift"
    weights: dict[str, Any] = field(default_factory=dict)  # WeightMapConfig fields
    augment: dict[str, Any] = field(default_factory=dict)  # TamAugmentConfig fields
    patch: int = 224
    batch_size: int = 4
    lr: float = 1e-4
    plateau_patience: int = 15  # loss "iterations" (blocks of plateau_block steps) without improvement before halving
    plateau_block: int = 10  # steps averaged into one plateau iteration (a single batch's loss is too noisy)
    plateau_factor: float = 0.5
    lr_min: float = 1e-6
    steps: int = 3000  # upper bound; early stopping usually ends the run before
    val_every: int = 100
    val_images: int = 8  # validation images scored (IoU, SBD) at each validation; the loss uses patches of all
    early_stop: int = 6  # consecutive validations whose loss stays above the best one: the curves have parted
    min_area_px: int = 30
    mpp: float = 0.25
    groups: str | None = None  # CSV image,group for a 70/15/15 split of a flat dataset
    seed: int = 0
    precision: str = "auto"
    device: str = "auto"
    threads: int = 0
    workers: int = 0  # processes preparing batches (augmentation) ahead of the network; 0 = in this process
    time_limit_s: float | None = None  # stop (keeping the best model) after this much training time in all

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict."""
        return dataclasses.asdict(self)


@dataclass
class TamImage:
    """One training or validation image with its targets."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8
    labels: np.ndarray  # (H, W) int32 instances
    target: np.ndarray  # (H, W) uint8 classes (background / TAM)
    weight: np.ndarray | None  # (H, W) float32 for the weights strategy


def dataset_splits(data: str | Path, groups: str | None = None, seed: int = 0) -> dict[str, list[Any]]:
    """Samples of train/val/test: the folder's own split folders, or a grouped 70/15/15 split of a flat folder."""
    root = Path(data)
    if (root / "train").is_dir():
        if groups:
            raise InputError(f"{root}: has its own train/ split folder; --groups applies to a flat images/ labels/ folder")
        return {s: (list_samples(root / s) if (root / s).is_dir() else []) for s in ("train", "val", "test")}
    samples = list_samples(root)
    split = group_split([s.name for s in samples], read_groups(groups) if groups else None, seed=seed)
    by_name = {s.name: s for s in samples}
    return {k: [by_name[n] for n in v] for k, v in split.items()}


def load_images(samples: list[Any], strategy: str, wcfg: WeightMapConfig, cache: WeightMapCache) -> list[TamImage]:
    """Read images and instance labels and build the strategy's class target (and weight map)."""
    out = []
    for s in samples:
        image, _ = read_image(s.image)
        labels = read_label(s.label).astype(np.int32)
        check_pair(image, labels, s.name)
        if strategy == "weights":
            target, weight = cache.get(labels, wcfg)
        else:
            target, weight = (labels > 0).astype(np.uint8), None
        out.append(TamImage(s.name, image, labels, target, weight))
    return out


def _batch(items: list[TamImage], cfg: TamTrainConfig, acfg: TamAugmentConfig, rng: np.random.Generator):
    xs, ts, ws, ins = [], [], [], []
    separation_px = WeightMapConfig(**cfg.weights).separation_px
    for _ in range(cfg.batch_size):
        it = items[int(rng.integers(len(items)))]
        h, w = it.target.shape
        centre = (rng.uniform(0, h - 1), rng.uniform(0, w - 1))
        arrays = [it.image, it.target, it.labels] + ([it.weight] if it.weight is not None else [])
        orders = [1, 0, 0] + ([1] if it.weight is not None else [])
        got = sample_patch(arrays, orders, centre, cfg.patch, rng, acfg, constant=(False, False, True))
        xs.append(colour_augment(got[0], rng, acfg))
        if it.weight is not None:
            # Nearest-neighbour warping breaks 1-px separation lines: redraw them on the warped instances.
            got[1] = np.where(got[2] > 0, separation_target(got[2], separation_px), got[1])
        ts.append(got[1])
        ins.append(got[2])
        ws.append(got[3] if it.weight is not None else np.ones(got[1].shape, np.float32))
    return np.stack(xs), np.stack(ts), np.stack(ws), np.stack(ins)


class _Batches(torch.utils.data.Dataset):
    """Batch number `step` of a run: seeded by (seed, step), so resumed and parallel runs draw the same patches."""

    def __init__(self, items: list[TamImage], cfg: TamTrainConfig, acfg: TamAugmentConfig, start: int) -> None:
        self.items, self.cfg, self.acfg, self.start = items, cfg, acfg, start

    def __len__(self) -> int:
        return max(0, self.cfg.steps - self.start)

    def __getitem__(self, i: int):
        return _batch(self.items, self.cfg, self.acfg, np.random.default_rng([self.cfg.seed, self.start + i]))


def _batch_stream(items: list[TamImage], cfg: TamTrainConfig, acfg: TamAugmentConfig, start: int):
    data = _Batches(items, cfg, acfg, start)
    if cfg.workers <= 0:
        return (data[i] for i in range(len(data)))
    # Augmentation runs on the CPU: on a GPU it is the bottleneck unless prepared ahead in workers.
    loader = torch.utils.data.DataLoader(data, batch_size=None, shuffle=False, num_workers=cfg.workers,
                                         prefetch_factor=4, persistent_workers=False)
    return (tuple(np.asarray(a) for a in b) for b in loader)


def _to_input(x: np.ndarray, mean: torch.Tensor, std: torch.Tensor, device: torch.device) -> torch.Tensor:
    xt = torch.from_numpy(x).to(device).permute(0, 3, 1, 2).float()
    return ((xt - mean) / std).contiguous(memory_format=torch.channels_last)


def evaluate_images(net: torch.nn.Module, mcfg: ModelConfig, images: list[TamImage], device: torch.device,
                    keep: bool = False) -> dict[str, Any]:
    """Foreground IoU and symmetric best Dice of every image (and the predictions when `keep`)."""
    was_training = net.training
    net.eval()
    pp = PostProcess.from_dict(mcfg.postprocess)
    mult = int(getattr(net, "required_multiple", 1))
    ious, sbds, preds = [], [], []
    for it in images:
        # One window over the whole image (up to 1024 px): no overlap computed twice.
        side = min(1024, max(it.image.shape[:2])) + 2 * 32
        window = -(-side // mult) * mult
        opts = InferenceOptions(window=window, halo=32, batch_size=1, device=str(device), multiple=mult)
        probs = predict_probs(net, it.image, mcfg.mean, mcfg.std, opts)
        pred = instances_from_probs(probs, pp)
        ious.append(float(iou(it.labels > 0, pred > 0)))
        sbds.append(float(sbd(it.labels, pred)))
        if keep:
            preds.append(pred)
    net.train(was_training)
    out: dict[str, Any] = {"iou": float(np.mean(ious)), "sbd": float(np.mean(sbds)), "iou_per_image": ious,
                           "sbd_per_image": sbds}
    if keep:
        out["predictions"] = preds
    return out


def model_config(cfg: TamTrainConfig, net: torch.nn.Module, extra: dict[str, Any] | None = None) -> ModelConfig:
    """The ModelConfig a trained TAM network ships with."""
    from pathseg.measure.population import DEFAULT_LARGE_THRESHOLD_UM2

    pp = PostProcess(min_area_px=cfg.min_area_px, watershed=False, max_hole_px=64)
    if cfg.strategy == "instance":
        pp = dataclasses.replace(pp, embed_dim=cfg.embed_dim, cluster=cfg.cluster, bandwidth=cfg.bandwidth)
    return ModelConfig(
        arch=cfg.arch, arch_kwargs=dict(net.config), classes=["background", "tam"], mpp=cfg.mpp,
        postprocess=dataclasses.asdict(pp),
        objects={"name": OBJECTS_NAME, "size_classes": {"threshold_um2": DEFAULT_LARGE_THRESHOLD_UM2, "names": ["small", "large"]},
                 # TAMs and their touching clusters are larger than nuclei: slide blocks need more context.
                 "slide_margin_px": 256},
        training={"config": cfg.to_dict(), "pathseg_version": __version__, **(extra or {})},
    )


def build_net(cfg: TamTrainConfig) -> torch.nn.Module:
    """The network of a run: arch + strategy (an embedding branch only for the instance strategy)."""
    if cfg.arch not in ARCHS:
        raise InputError(f"--arch {cfg.arch}: choose from {', '.join(ARCHS)}")
    if cfg.strategy not in STRATEGIES:
        raise InputError(f"--strategy {cfg.strategy}: choose from {', '.join(STRATEGIES)}")
    kwargs = dict(TAM_ARCH_DEFAULTS.get(cfg.arch, {}), **cfg.arch_kwargs)
    kwargs.update(in_channels=3, num_classes=2, embed_dim=cfg.embed_dim if cfg.strategy == "instance" else 0)
    return create_model(cfg.arch, **kwargs)


def _check(cfg: TamTrainConfig, net: torch.nn.Module) -> None:
    # Mistakes in the settings: one clear line before anything is written or trained.
    mult = int(getattr(net, "required_multiple", 1))
    if cfg.patch % mult:
        raise InputError(f"--patch {cfg.patch}: must be a multiple of {mult} for {cfg.arch}")
    if cfg.lr <= 0:
        raise InputError(f"--lr {cfg.lr}: must be > 0")
    if cfg.batch_size < 2 and any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()):
        raise InputError(f"--batch-size {cfg.batch_size}: BatchNorm needs at least 2 patches per batch")
    try:
        pick_device(cfg.device)
    except ValueError as e:
        raise InputError(str(e)) from None


def train_tam(cfg: TamTrainConfig, progress: Callable[[int, int, dict], None] | None = None) -> Path:
    """Train (or resume) one model/strategy pair on a TAM dataset; returns the final model folder."""
    net = build_net(cfg)  # validates arch and strategy before any folder is made
    _check(cfg, net)
    run = open_run(cfg.out, cfg.to_dict(), _RESUMABLE, cfg.threads, cfg.seed)
    net = build_net(cfg)  # rebuilt after open_run seeded torch: same initial weights on every run
    device = pick_device(cfg.device)
    wcfg = WeightMapConfig(**cfg.weights)
    acfg = TamAugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.augment.items()})
    # Cached beside the run, not in the dataset folder (which may be read-only or shared).
    cache = WeightMapCache(run / "weight-maps" if cfg.strategy == "weights" else None)
    splits = dataset_splits(cfg.data, cfg.groups, cfg.seed)
    if not splits["train"]:
        raise InputError(f"{cfg.data}: no training images")
    train = load_images(splits["train"], cfg.strategy, wcfg, cache)
    val = load_images(splits["val"], cfg.strategy, wcfg, cache) if splits["val"] else []
    log.info("%s/%s: %d training, %d validation images", cfg.arch, cfg.strategy, len(train), len(val))
    (run / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    (run / "split.json").write_text(json.dumps({k: [s.name for s in v] for k, v in splits.items()}, indent=2))

    net = net.to(device).to(memory_format=torch.channels_last)
    loss_fn = TamLoss(cfg.strategy, num_classes=2,
                      disc={"delta_v": cfg.delta_v, "delta_d": cfg.delta_d}).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    mcfg = model_config(cfg, net, {"n_train": len(train), "n_val": len(val)})
    fresh = {"step": 0, "best": None, "history": [], "seconds": 0.0, "block": [], "plateau_best": None,
             "stall": 0, "val_best": None, "val_bad": 0, "stopped": None}
    state = load_training_state(run / "checkpoint", net, opt) or fresh
    for k, v in fresh.items():
        state.setdefault(k, v)
    if state["stopped"] is not None and state["val_bad"] < cfg.early_stop:
        state["stopped"] = None  # resumed with a more patient --early-stop
    mean = torch.tensor(mcfg.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(mcfg.std, device=device).view(1, 3, 1, 1) * 255
    # Fixed validation patches (no augmentation) for the validation loss.
    vrng = np.random.default_rng([cfg.seed, 999])
    noaug = TamAugmentConfig(enabled=False)
    vbatches = [_batch(val, cfg, noaug, vrng) for _ in range(4)] if val else []

    net.train()
    t0 = time.perf_counter() - state["seconds"]
    running: list[float] = []
    step = state["step"]
    batches = _batch_stream(train, cfg, acfg, step)
    while step < cfg.steps and state["stopped"] is None:
        if cfg.time_limit_s is not None and time.perf_counter() - t0 > cfg.time_limit_s:
            log.info("time limit of %.0f s reached at step %d", cfg.time_limit_s, step)
            break
        x, t, w, ins = next(batches)
        with autocast_context(device, cfg.precision):
            out = net(_to_input(x, mean, std, device))
        parts = loss_fn(out.float(), torch.from_numpy(t).long().to(device), torch.from_numpy(w).to(device),
                        torch.from_numpy(ins).long().to(device))
        opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        opt.step()
        step += 1
        lv = float(parts["loss"].item())
        running.append(lv)
        _plateau(state, opt, lv, cfg)
        record: dict[str, Any] = {}
        if step % cfg.val_every == 0 or step == cfg.steps:
            record = {"step": step, "loss": float(np.mean(running)), "lr": opt.param_groups[0]["lr"],
                      "seconds": time.perf_counter() - t0}
            running = []
            if val:
                record["val"] = _validate(net, mcfg, val[: cfg.val_images], vbatches, loss_fn, mean, std, device)
                _early_stop(state, record, cfg)
            keep_record(run, net, mcfg, opt, state, record, "sbd")
        if progress is not None:
            progress(step, cfg.steps, record)
    return publish_final(run, net, mcfg, state)


def _plateau(state: dict[str, Any], opt: torch.optim.Optimizer, loss: float, cfg: TamTrainConfig) -> None:
    # Paper: lr halved when the loss stalls for 15 iterations. One batch's loss is too noisy to
    # test, so an "iteration" here is the mean loss of a block of plateau_block steps.
    block = state.setdefault("block", [])
    block.append(loss)
    if len(block) < cfg.plateau_block:
        return
    mean = float(np.mean(block))
    state["block"] = []
    if state["plateau_best"] is None or mean < state["plateau_best"] * (1 - 1e-3):
        state["plateau_best"], state["stall"] = mean, 0
        return
    state["stall"] += 1
    if state["stall"] >= cfg.plateau_patience:
        for g in opt.param_groups:
            g["lr"] = max(cfg.lr_min, g["lr"] * cfg.plateau_factor)
        state["stall"] = 0
        state["plateau_best"] = mean


def _early_stop(state: dict[str, Any], record: dict[str, Any], cfg: TamTrainConfig) -> None:
    # "Trained until the validation loss diverged from the training loss": stop after
    # `early_stop` validations whose loss stays above the best one seen.
    vl = record["val"]["loss"]
    if state["val_best"] is None or vl < state["val_best"]:
        state["val_best"], state["val_bad"] = vl, 0
    else:
        state["val_bad"] += 1
        if state["val_bad"] >= cfg.early_stop:
            state["stopped"] = record["step"]
            record["early_stop"] = True


@torch.no_grad()
def _validate(net, mcfg, scored, vbatches, loss_fn, mean, std, device) -> dict[str, float]:
    net.eval()
    losses = []
    for x, t, w, ins in vbatches:
        out = net(_to_input(x, mean, std, device))
        losses.append(float(loss_fn(out.float(), torch.from_numpy(t).long().to(device), torch.from_numpy(w).to(device),
                                    torch.from_numpy(ins).long().to(device))["loss"]))
    scores = evaluate_images(net, mcfg, scored, device)
    net.train()
    return {"loss": float(np.mean(losses)), "iou": scores["iou"], "sbd": scores["sbd"]}
