"""Self-describing model folders: safetensors weights + config.json (+ model card)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from pathseg._version import __version__
from pathseg.errors import InputError
from pathseg.models._registry import create_model

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "MODEL_CARD.md"


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model and use it correctly on new images."""

    arch: str = "unet"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    classes: list[str] = field(default_factory=lambda: ["background", "nucleus", "boundary"])
    mpp: float = 0.25
    # Input normalisation: x = (rgb / 255 - mean) / std, per channel.
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])
    postprocess: dict[str, Any] = field(default_factory=dict)
    # Colour normalisation applied to every input before the network, e.g. {"kind": "reinhard",
    # "target": {"mean": [L, a, b], "std": [L, a, b]}} for models trained on fitted synthetic colours.
    normalise: dict[str, Any] = field(default_factory=dict)
    # What the objects are and how they are classed in the outputs, e.g. {"name": "TAM",
    # "size_classes": {"threshold_um2": 100.0, "names": ["small", "large"]}}; empty = nuclei.
    objects: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    pathseg_version: str = __version__

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Build from a dict, ignoring keys this version does not know."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict."""
        return dataclasses.asdict(self)


@dataclass
class LoadedModel:
    """A network in eval mode together with its config, name and weight checksum."""

    net: nn.Module
    config: ModelConfig
    name: str
    sha256: str
    path: Path


def builtin_dir() -> Path:
    """Folder that holds the built-in model folders inside the installed package."""
    return Path(str(resources.files("pathseg.models").joinpath("weights")))


def list_builtin() -> dict[str, Path]:
    """Names of built-in models mapped to their folders."""
    root = builtin_dir()
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if (p / WEIGHTS_FILE).is_file()}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_model(folder: str | Path, net: nn.Module, config: ModelConfig, half: bool = False) -> Path:
    """Write weights (safetensors) and config.json into `folder`; returns the weights path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    if half:
        # fp16 storage halves the shipped size; BN running stats and weights are well within range.
        state = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    cfg = config.to_dict()
    cfg["torch_version"] = torch.__version__
    cfg["python_version"] = platform.python_version()
    tmp = folder / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"pathseg_config": json.dumps(cfg)})
    os.replace(tmp, folder / WEIGHTS_FILE)
    tmpc = folder / (CONFIG_FILE + ".tmp")
    tmpc.write_text(json.dumps(cfg, indent=2) + "\n")
    os.replace(tmpc, folder / CONFIG_FILE)
    return folder / WEIGHTS_FILE


def resolve_model_path(name_or_path: str | Path) -> tuple[str, Path]:
    """Map a built-in name, a model folder or a .safetensors file to (name, folder)."""
    s = str(name_or_path)
    builtin = list_builtin()
    if s in builtin:
        return s, builtin[s]
    p = Path(s)
    if p.is_file() and p.suffix == ".safetensors":
        return p.parent.name, p.parent
    if p.is_dir() and (p / WEIGHTS_FILE).is_file():
        return p.name, p
    if p.is_dir() and (p / "model" / WEIGHTS_FILE).is_file():  # a `pathseg train` run folder
        return p.name, p / "model"
    known = ", ".join(builtin) or "none installed"
    raise InputError(f"{s}: not a built-in model ({known}) nor a folder with {WEIGHTS_FILE}")


def load_model(name_or_path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a built-in model by name, or a model folder / weights file written by pathseg."""
    name, folder = resolve_model_path(name_or_path)
    cfg_path = folder / CONFIG_FILE
    try:
        cfg = ModelConfig.from_dict(json.loads(cfg_path.read_text()))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{cfg_path}: cannot read model config ({e})") from None
    net = create_model(cfg.arch, **cfg.arch_kwargs)
    wpath = folder / WEIGHTS_FILE
    try:
        # safetensors holds tensors only: no pickle, no code execution on load.
        state = load_file(str(wpath))
    except Exception as e:  # noqa: BLE001 - any parse failure is a bad file for the user
        raise InputError(f"{wpath}: cannot read weights ({e})") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputError(f"{wpath}: weights do not fit {cfg.arch} {cfg.arch_kwargs} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    stored, has = int(cfg.postprocess.get("embed_dim", 0) or 0), int(getattr(net, "embed_dim", 0) or 0)
    if stored != has:
        if stored:  # the embedding channels would be read as classes, or classes as embedding
            raise InputError(f"{cfg_path}: postprocess embed_dim {stored} does not match the network's {has}")
        cfg.postprocess = dict(cfg.postprocess, embed_dim=has)  # an embedding network: its outputs are clustered
    # channels_last: ~1.7x faster fp32 convolutions on these CPUs (shared/PERF.md), same on GPU.
    net.eval().to(device).to(memory_format=torch.channels_last)
    return LoadedModel(net=net, config=cfg, name=name, sha256=_sha256(wpath), path=folder)
