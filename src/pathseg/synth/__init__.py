"""Synthetic histology: scene scripts -> noisy image, clean image, task mask and instances (varnet paper)."""

from __future__ import annotations

from typing import Any

from pathseg.synth.colour import load_colours
from pathseg.synth.generate import (
    SynthSample,
    generate,
    generate_batch,
    list_scenes,
    load_scene,
    write_dataset,
)
from pathseg.synth.shapes import PatchBank
from pathseg.synth.spec import Scene

__all__ = ["PatchBank", "Scene", "SynthSample", "fit_colours", "generate", "generate_batch", "list_scenes",
           "load_colours", "load_scene", "reinhard", "write_dataset"]


def __getattr__(name: str) -> Any:
    """fit_colours / reinhard load lazily: fitting needs scikit-learn, generating does not."""
    if name in ("fit_colours", "reinhard"):
        from pathseg.synth import colour_fit

        return getattr(colour_fit, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
