"""Segmentation networks, built from a registry by name, and their checkpoints."""

from pathseg.models import deeplab as _deeplab  # noqa: F401  (registers "deeplabv3")
from pathseg.models import segnet as _segnet  # noqa: F401  (registers "segnet")
from pathseg.models import unet as _unet  # noqa: F401  (registers "unet")
from pathseg.models import varnet as _varnet  # noqa: F401  (registers "varnet", "varnet_seg")
from pathseg.models._registry import create_model, list_architectures, register_model
from pathseg.models.checkpoint import LoadedModel, ModelConfig, list_builtin, load_model, save_model
from pathseg.models.deeplab import DeepLabV3
from pathseg.models.segnet import SegNet
from pathseg.models.unet import UNet

__all__ = [
    "DeepLabV3",
    "LoadedModel",
    "ModelConfig",
    "SegNet",
    "UNet",
    "create_model",
    "list_architectures",
    "list_builtin",
    "load_model",
    "register_model",
    "save_model",
]
