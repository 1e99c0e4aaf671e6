"""Resumable training state: model, Adam moments and counters, all in safetensors + JSON."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pathseg.errors import OutputError
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


def check_resume(run: Path, config: dict[str, Any], resumable: set[str]) -> None:
    """Refuse a run folder whose saved settings differ from `config` in a key outside `resumable`."""
    saved = run / "train_config.json"
    # Only a run that saved a checkpoint binds the folder; a start that failed early does not.
    if not saved.is_file() or not ((run / "checkpoint").is_dir() or (run / "checkpoint.old").is_dir()):
        return
    old = json.loads(saved.read_text())
    new = json.loads(json.dumps(config))
    diff = sorted(k for k in new if k not in resumable and old.get(k) != new[k])
    if diff:
        raise OutputError(f"{run}: holds a run with other settings ({', '.join(diff)}); choose another --out")


def selected_config(mcfg: ModelConfig, record: dict[str, Any]) -> ModelConfig:
    """The model config with the training record it was selected at."""
    return dataclasses.replace(mcfg, training=dict(mcfg.training, selected=record))


def keep_record(run: Path, net: torch.nn.Module, mcfg: ModelConfig, opt: torch.optim.Optimizer, state: dict[str, Any],
                record: dict[str, Any], metric: str) -> None:
    """Log a step record, keep best/ by the validation `metric` (higher is better), save the checkpoint."""
    if "val" in record and (state["best"] is None or record["val"][metric] > state["best"]["val"][metric]):
        state["best"] = record
        save_model(run / "best", net, selected_config(mcfg, record))
    state["history"].append(record)
    state.update(step=record["step"], seconds=record["seconds"])
    save_training_state(run / "checkpoint", net, mcfg, opt, state)
    with open(run / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def publish_final(run: Path, net: torch.nn.Module, mcfg: ModelConfig, state: dict[str, Any]) -> Path:
    """Write run/model: the best validated model when there is one, else the last weights."""
    final = run / "model"
    if state["best"] is not None:
        # best/ already holds the selected weights and config: publish it as the final model.
        shutil.rmtree(final, ignore_errors=True)
        shutil.copytree(run / "best", final)
    else:
        save_model(final, net, selected_config(mcfg, state["history"][-1] if state["history"] else {}))
    return final


def open_run(out: str | Path, config: dict[str, Any], resumable: set[str], threads: int, seed: int) -> Path:
    """Create (or check for resume) a run folder and set torch's threads and seed for the run."""
    run = Path(out)
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{run}: cannot create the run folder ({e.strerror})") from None
    check_resume(run, config, resumable)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    return run
