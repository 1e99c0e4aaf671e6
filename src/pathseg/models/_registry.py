"""A flat name -> constructor registry, so configs and the CLI can build models by name."""

from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model class or factory under `name` (lower-case)."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name.lower()
        if key in _MODELS:
            raise ValueError(f"model {key!r} is already registered")
        _MODELS[key] = fn
        return fn

    return deco


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered architecture by name; keyword arguments are its config."""
    key = name.lower()
    if key not in _MODELS:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(sorted(_MODELS))}")
    return _MODELS[key](**kwargs)


def list_architectures() -> list[str]:
    """Names of all registered architectures."""
    return sorted(_MODELS)
