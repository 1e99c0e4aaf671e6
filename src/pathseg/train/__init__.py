"""Training of pathseg models (the `pathseg train ...` commands)."""

from pathseg.train.nuclei import TrainConfig, train_nuclei
from pathseg.train.varnet import VarNetTrainConfig, evaluate_synthetic, train_varnet

__all__ = ["TrainConfig", "VarNetTrainConfig", "evaluate_synthetic", "train_nuclei", "train_varnet"]
