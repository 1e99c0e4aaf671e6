"""The model registry: architectures built by name, so configs and the CLI can rebuild them."""

from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

from pathseg._registry import Registry

MODELS: Registry[nn.Module] = Registry("architecture")


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model class or factory under `name` (lower-case)."""
    return MODELS.register(name)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered architecture by name; keyword arguments are its config."""
    return MODELS.create(name, **kwargs)


def list_architectures() -> list[str]:
    """Names of all registered architectures."""
    return MODELS.names()
