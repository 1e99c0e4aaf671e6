"""Training losses, built from a registry by name."""

from pathseg.losses._registry import create_loss, list_losses, register_loss
from pathseg.losses.discriminative import DiscriminativeLoss, TamLoss
from pathseg.losses.instance_weights import WeightMapCache, WeightMapConfig, instance_weight_map, separation_target
from pathseg.losses.partial import PlainCE, WeightedBackgroundCE, background_weight_map, l2_penalty

__all__ = [
    "DiscriminativeLoss",
    "PlainCE",
    "TamLoss",
    "WeightMapCache",
    "WeightMapConfig",
    "WeightedBackgroundCE",
    "background_weight_map",
    "create_loss",
    "instance_weight_map",
    "l2_penalty",
    "list_losses",
    "register_loss",
    "separation_target",
]
