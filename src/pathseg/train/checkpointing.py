"""Resumable training state: model, Adam moments and counters, all in safetensors + JSON."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pathseg.models import ModelConfig, save_model


def save_training_state(folder: Path, net: torch.nn.Module, cfg: ModelConfig, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Write model, optimizer tensors and counters as one unit: all new or all old after a crash."""
    tmp_dir = folder.with_name(folder.name + ".tmp")
    old_dir = folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    _write_state(tmp_dir, net, cfg, opt, state)
    # Swap folders by renames: at every instant either `folder` or `folder.old` is complete.
    shutil.rmtree(old_dir, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old_dir)
    os.replace(tmp_dir, folder)
    shutil.rmtree(old_dir, ignore_errors=True)


def _write_state(folder: Path, net: torch.nn.Module, cfg: ModelConfig, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_model(folder, net, cfg)
    tensors: dict[str, torch.Tensor] = {}
    sd = opt.state_dict()
    for pid, st in sd["state"].items():
        for k, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            tensors[f"{pid}.{k}"] = t.detach().cpu().contiguous()
    tmp = folder / "optimizer.safetensors.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, folder / "optimizer.safetensors")
    meta = dict(state, param_groups=sd["param_groups"])
    tmpj = folder / "state.json.tmp"
    tmpj.write_text(json.dumps(meta, indent=2))
    os.replace(tmpj, folder / "state.json")


def load_training_state(folder: Path, net: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any] | None:
    """Restore model and optimizer from `folder`; returns the saved counters or None."""
    if not (folder / "state.json").is_file():
        old = folder.with_name(folder.name + ".old")  # a crash between the two renames
        if not (old / "state.json").is_file():
            return None
        folder = old
    sj = folder / "state.json"
    meta = json.loads(sj.read_text())
    net.load_state_dict(load_file(str(folder / "model.safetensors")))
    flat = load_file(str(folder / "optimizer.safetensors"))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in flat.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = t
    opt.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    return meta
