"""From per-pixel classes to separate objects, and back (training targets)."""

from pathseg.instances.cluster import cluster_embeddings
from pathseg.instances.extract import PostProcess, instances_from_probs, relabel_sequential
from pathseg.instances.targets import BACKGROUND, BOUNDARY, INTERIOR, three_class_target

__all__ = [
    "BACKGROUND",
    "BOUNDARY",
    "INTERIOR",
    "PostProcess",
    "cluster_embeddings",
    "instances_from_probs",
    "relabel_sequential",
    "three_class_target",
]
