"""The loss registry: losses built by name from training configs."""

from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

from pathseg._registry import Registry

LOSSES: Registry[nn.Module] = Registry("loss")


def register_loss(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a loss class under `name`."""
    return LOSSES.register(name)


def create_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered loss by name."""
    return LOSSES.create(name, **kwargs)


def list_losses() -> list[str]:
    """Names of all registered losses."""
    return LOSSES.names()
