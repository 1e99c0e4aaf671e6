"""A flat name -> loss-class registry."""

from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

_LOSSES: dict[str, Callable[..., nn.Module]] = {}


def register_loss(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a loss class under `name`."""

    def deco(cls: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _LOSSES[name.lower()] = cls
        return cls

    return deco


def create_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered loss by name."""
    key = name.lower()
    if key not in _LOSSES:
        raise KeyError(f"unknown loss {name!r}; known: {', '.join(sorted(_LOSSES))}")
    return _LOSSES[key](**kwargs)


def list_losses() -> list[str]:
    """Names of all registered losses."""
    return sorted(_LOSSES)
