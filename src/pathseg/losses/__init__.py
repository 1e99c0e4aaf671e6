"""Training losses, built from a registry by name."""

from pathseg.losses._registry import create_loss, list_losses, register_loss
from pathseg.losses.partial import PlainCE, WeightedBackgroundCE, background_weight_map, l2_penalty

__all__ = [
    "PlainCE",
    "WeightedBackgroundCE",
    "background_weight_map",
    "create_loss",
    "l2_penalty",
    "list_losses",
    "register_loss",
]
