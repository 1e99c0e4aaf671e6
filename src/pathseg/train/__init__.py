"""Training of pathseg models (the `pathseg train ...` commands)."""

from pathseg.train.nuclei import TrainConfig, train_nuclei

__all__ = ["TrainConfig", "train_nuclei"]
