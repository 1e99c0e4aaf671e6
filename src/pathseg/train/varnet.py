"""`pathseg train varnet`: the variational network on synthetic scenes, resumable, with validation.

Training images come from a fixed pool of generator seeds 0..n_train-1 (the paper trains on
800 fixed synthetic images), generated on first use and cached in ``out/cache`` as float16
npz chunks, so a resumed run and a second epoch cost no generation. Validation images use
seeds 10_000_000 + i, never seen in training. ``arch="unet"`` trains the paper's UNet
comparison (3 scales, 32 channels, BCE on the mask only) on exactly the same data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pathseg._version import __version__
from pathseg.errors import InputError
from pathseg.instances import PostProcess
from pathseg.models import ModelConfig
from pathseg.models.unet import UNet
from pathseg.models.varnet import VarNet, VarNetSegmenter, varnet_loss
from pathseg.tiling import pick_device
from pathseg.train.checkpointing import (
    keep_record,
    load_training_state,
    open_run,
    publish_final,
)

log = logging.getLogger(__name__)

DataFn = Callable[[Sequence[int], int], dict[str, np.ndarray]]
VAL_SEED0 = 10_000_000
CHUNK = 32  # training images per cache file
# Settings that may change when a run is resumed (longer training, other reporting cadence).
_RESUMABLE = {"steps", "val_every", "ckpt_every", "device", "threads"}


@dataclass
class VarNetTrainConfig:
    """Every setting of a variational network run; saved as train_config.json in the run folder."""

    scenario: str
    out: str
    steps: int = 1500  # Adam iterations (paper: 1500)
    batch_size: int = 8
    size: int = 96  # side of the square training images (paper: 300)
    lr: float = 1e-4  # paper: 1e-4 (scenarios 1, 2), 5e-5 (scenario 3 and the UNet)
    n_train: int = 800
    n_val: int = 32
    val_every: int = 100
    ckpt_every: int = 50
    seed: int = 0
    steps_nt: int = 10  # N_t, unrolled gradient steps of the network
    zero_mean_u: bool = True  # the paper drops it for scenario 1
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    device: str = "auto"
    arch: str = "varnet"  # or "unet" (the paper's comparison)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict."""
        return dataclasses.asdict(self)

    def check(self) -> None:
        """Raise InputError for settings that cannot train."""
        if self.arch not in ("varnet", "unet"):
            raise InputError(f"arch {self.arch!r}: choose varnet or unet")
        for name in ("steps", "batch_size", "n_train", "steps_nt", "val_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_val < 0:
            raise InputError(f"n_val must be >= 0, got {self.n_val}")
        if self.size < 8 or (self.arch == "unet" and self.size % 4):
            raise InputError(f"size {self.size}: must be >= 8 (and a multiple of 4 for the UNet)")


def _load_scene(scenario: str | Path | Any) -> Any:
    from pathseg.synth import (
        load_scene,  # lazy: pathseg.models must not need the generator
    )

    return load_scene(scenario) if isinstance(scenario, (str, Path)) else scenario


def synth_data_fn(scenario: str | Path | Any) -> DataFn:
    """data_fn(seeds, size) drawing from pathseg.synth: a built-in scene name, a script path or a Scene."""
    from pathseg.synth import generate_batch

    scene = _load_scene(scenario)

    def data_fn(seeds: Sequence[int], size: int) -> dict[str, np.ndarray]:
        return generate_batch(scene, list(seeds), (size, size))

    return data_fn


def _scene_normalise(scene: Any) -> dict[str, Any]:
    """ModelConfig.normalise for a scene: colours fitted on Reinhard-normalised real images
    look like that reference, so real inputs are mapped to it too (empty: no mapping)."""
    path = getattr(scene, "colours", None)
    if path is None:
        return {}
    reference = json.loads(Path(path).read_text()).get("reference")
    return {"kind": "reinhard", "target": reference} if reference else {}


class _Pool:
    """The fixed training pool, generated chunk by chunk on first use and cached on disk."""

    def __init__(self, folder: Path, data_fn: DataFn, cfg: VarNetTrainConfig, fingerprint: str) -> None:
        self.folder, self.data_fn, self.cfg = folder, data_fn, cfg
        self.chunks: dict[int, dict[str, np.ndarray]] = {}
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"scenario": cfg.scenario, "scene_sha256": fingerprint, "size": cfg.size, "n_train": cfg.n_train,
                "chunk": CHUNK, "dtype": "float16", "pathseg_version": __version__}
        mpath = folder / "meta.json"
        try:
            same = json.loads(mpath.read_text()) == meta
        except (OSError, ValueError):  # missing or damaged: the cache cannot be trusted
            same = False
        if not same:
            # Another scene or size: the cached images would be wrong, not merely stale.
            for p in folder.glob("train_*.npz"):
                p.unlink()
            mpath.write_text(json.dumps(meta))

    def _chunk(self, k: int) -> dict[str, np.ndarray]:
        if k in self.chunks:
            return self.chunks[k]
        path = self.folder / f"train_{k:05d}.npz"
        data = None
        n_img, size = len(range(k * CHUNK, min((k + 1) * CHUNK, self.cfg.n_train))), self.cfg.size
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    data = {n: z[n] for n in ("u0", "g_u", "g_m")}
                # A truncated or foreign file must not feed wrong-shaped batches into training.
                want = {"u0": (n_img, 3, size, size), "g_u": (n_img, 3, size, size), "g_m": (n_img, 1, size, size)}
                if any(data[n].shape != want[n] for n in want):
                    raise ValueError("wrong shapes")
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                log.warning("%s: unreadable cache file, generating it again", path)
                data = None
        if data is None:
            seeds = range(k * CHUNK, min((k + 1) * CHUNK, self.cfg.n_train))
            raw = self.data_fn(seeds, self.cfg.size)
            # float16 halves the memory of the pool (800 x 300^2 images: 1 GB instead of 2)
            # at a quantisation (~5e-4) far below the synthetic noise.
            data = {n: np.asarray(raw[n], np.float16) for n in ("u0", "g_u", "g_m")}
            tmp = path.with_name(path.stem + ".tmp.npz")
            np.savez(tmp, **data)
            os.replace(tmp, path)
        self.chunks[k] = data
        return data

    def batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """Stacked float32 arrays u0, g_u, g_m of the pool images at `indices`."""
        rows = [(self._chunk(i // CHUNK), i % CHUNK) for i in indices]
        return {n: np.stack([c[n][j] for c, j in rows]).astype(np.float32) for n in ("u0", "g_u", "g_m")}


def _tensors(data: dict[str, np.ndarray], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out = []
    for n in ("u0", "g_u", "g_m"):
        t = torch.as_tensor(np.ascontiguousarray(data[n], np.float32)).to(device)
        out.append(t.contiguous(memory_format=torch.channels_last))
    return out[0], out[1], out[2]


def _predict(net: nn.Module, u0: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(u_T or None, m_T) of a VarNet / VarNetSegmenter, or (None, p(class 1)) of a logit network."""
    inner = net.varnet if isinstance(net, VarNetSegmenter) else net
    if isinstance(inner, VarNet):
        return inner(u0)
    return None, torch.softmax(net(u0).float(), 1)[:, 1:2]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp(min=1e-12)
    return -10.0 * torch.log10(mse)  # data range 1


@torch.no_grad()
def evaluate_arrays(net: nn.Module, data: dict[str, np.ndarray], batch_size: int = 8,
                    device: torch.device | str | None = None) -> dict[str, float | None]:
    """Mean PSNR (u0, u_T vs g_u, dB), mask accuracy and Dice (m_T > 0.5 vs g_m) over images."""
    dev = torch.device(device) if device is not None else next(net.parameters()).device
    was_training = net.training
    net.eval()
    rows: dict[str, list[torch.Tensor]] = {"psnr_u0": [], "psnr_uT": [], "acc": [], "dice": []}
    for i in range(0, len(data["u0"]), batch_size):
        u0, g_u, g_m = _tensors({k: v[i : i + batch_size] for k, v in data.items()}, dev)
        u, m = _predict(net, u0)
        rows["psnr_u0"].append(_psnr(u0, g_u))
        if u is not None:
            rows["psnr_uT"].append(_psnr(u, g_u))
        pred, true = (m > 0.5).flatten(1).float(), (g_m > 0.5).flatten(1).float()
        rows["acc"].append((pred == true).float().mean(1))
        inter, total = (pred * true).sum(1), pred.sum(1) + true.sum(1)
        # Both empty: a perfect answer, Dice 1 (not 0/0).
        rows["dice"].append(torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total)))
    net.train(was_training)

    def mean(key: str) -> float | None:
        return float(torch.cat(rows[key]).mean()) if rows[key] else None

    return {"psnr_u0": mean("psnr_u0"), "psnr_uT": mean("psnr_uT"), "mask_accuracy": mean("acc"), "mask_dice": mean("dice")}


def evaluate_synthetic(net: nn.Module, scene: str | Path | Any, seeds: Sequence[int], size: int,
                       data_fn: DataFn | None = None, batch_size: int = 8) -> dict[str, float | None]:
    """{"psnr_u0", "psnr_uT", "mask_accuracy", "mask_dice"}: means over freshly generated scenes.

    psnr_uT is None for networks without a reconstruction (the UNet comparison).
    """
    data = (data_fn or synth_data_fn(scene))(list(seeds), size)
    return evaluate_arrays(net, data, batch_size)


def build_net(cfg: VarNetTrainConfig) -> nn.Module:
    """The network a config trains: VarNetSegmenter (arch varnet) or the paper's small UNet."""
    if cfg.arch == "unet":
        # Paper: 3 scales of two 3x3 conv + ReLU, 32 channels; ours doubles per scale (32/64/128).
        return UNet(in_channels=3, num_classes=2, width=32, levels=3)
    return VarNetSegmenter(steps=cfg.steps_nt, zero_mean_u=cfg.zero_mean_u)


def _loss(net: nn.Module, cfg: VarNetTrainConfig, u0: torch.Tensor, g_u: torch.Tensor, g_m: torch.Tensor) -> torch.Tensor:
    if cfg.arch == "unet":
        logits = net(u0)
        # Two-class softmax == sigmoid of the logit difference: BCE on the mask only.
        return F.binary_cross_entropy_with_logits(logits[:, 1] - logits[:, 0], g_m[:, 0])
    u, m = net.varnet(u0)
    return varnet_loss(u, m, g_u, g_m)


def train_varnet(cfg: VarNetTrainConfig, progress: Callable[[int, int, dict], None] | None = None,
                 data_fn: DataFn | None = None) -> Path:
    """Train (or resume) a variational network (or the UNet comparison); returns the final model folder.

    data_fn(seeds, size) -> {"u0", "g_u": (N, 3, H, W), "g_m": (N, 1, H, W)} float32 replaces
    the synthetic generator (tests, other data); by default scenes come from cfg.scenario.
    """
    cfg.check()
    run = open_run(cfg.out, cfg.to_dict(), _RESUMABLE, cfg.threads, cfg.seed)
    device = pick_device(cfg.device)
    mpp, mask_name, fingerprint, normalise = 0.25, "mask", "custom data_fn", {}
    if data_fn is None:
        scene = _load_scene(cfg.scenario)
        data_fn = synth_data_fn(scene)
        # The scene's name names the mask class; its script text keys the image cache (an
        # edited scene file must not train on images of the old one).
        mpp, mask_name = float(scene.mpp or 0.25), scene.name
        fingerprint = hashlib.sha256(scene.text.encode()).hexdigest()
        normalise = _scene_normalise(scene)
    pool = _Pool(run / "cache", data_fn, cfg, fingerprint)
    val = data_fn([VAL_SEED0 + i for i in range(cfg.n_val)], cfg.size) if cfg.n_val else None
    (run / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

    net = build_net(cfg).to(device).to(memory_format=torch.channels_last)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    mcfg = ModelConfig(
        arch="unet" if cfg.arch == "unet" else "varnet_seg",
        arch_kwargs=dict(net.config),
        classes=["background", mask_name],
        mpp=mpp,
        # The network sees rgb / 255 in [0, 1] as it did in training (u0 of the generator).
        mean=[0.0, 0.0, 0.0],
        std=[1.0, 1.0, 1.0],
        postprocess=dataclasses.asdict(PostProcess()),
        normalise=normalise,
        training={"config": cfg.to_dict(), "pathseg_version": __version__},
    )
    state = load_training_state(run / "checkpoint", net, opt) or {"step": 0, "best": None, "history": [], "seconds": 0.0}
    if state["step"]:
        log.info("resuming %s at step %d", run, state["step"])

    t0 = time.perf_counter() - state["seconds"]
    running: list[float] = []
    step = state["step"]
    while step < cfg.steps:
        # One generator per step, seeded by (seed, step): a resumed run draws the same images.
        picks = np.random.default_rng([cfg.seed, step]).integers(cfg.n_train, size=cfg.batch_size)
        u0, g_u, g_m = _tensors(pool.batch(picks.tolist()), device)
        loss = _loss(net, cfg, u0, g_u, g_m)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if isinstance(net, VarNetSegmenter):
            net.varnet.project_()  # the paper projects onto the admissible set after every step
        step += 1
        running.append(loss.item())
        record: dict[str, Any] = {}
        do_val = val is not None and step % cfg.val_every == 0
        if do_val or step % cfg.ckpt_every == 0 or step == cfg.steps:
            record = {"step": step, "loss": float(np.mean(running)), "seconds": time.perf_counter() - t0}
            running = []
            if do_val:
                record["val"] = evaluate_arrays(net, val, cfg.batch_size)
            keep_record(run, net, mcfg, opt, state, record, "mask_dice")
        if progress is not None:
            progress(step, cfg.steps, record)

    return publish_final(run, net, mcfg, state)
