"""Image -> instances -> measurements, in memory (`segment`) and to files (`segment_to_folder`)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from skimage.transform import rescale, resize

from pathseg._version import __version__
from pathseg.instances import PostProcess, instances_from_probs
from pathseg.io import read_image
from pathseg.measure import measure_instances
from pathseg.models import LoadedModel, load_model
from pathseg.tiling import InferenceOptions, predict_probs

log = logging.getLogger(__name__)

# Within this relative difference the image is used at its own scale (no resampling).
MPP_TOLERANCE = 0.1


@dataclass
class SegmentationResult:
    """Instances of one image, their measurements and how they were obtained."""

    labels: np.ndarray  # (H, W) int32, 0 = background
    table: dict[str, np.ndarray]  # column table, one row per instance
    mpp: float | None  # pixel size of `labels`; None when unknown
    mpp_assumed: bool  # True when no mpp was known: the model's scale was used, um columns are NaN
    timings: dict[str, float] = field(default_factory=dict)


def _as_model(model: LoadedModel | str | Path) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else load_model(model)


def segment(
    image: np.ndarray | str | Path,
    model: LoadedModel | str | Path = "nuclei-he",
    mpp: float | None = None,
    options: InferenceOptions | None = None,
    postprocess: PostProcess | None = None,
    progress: Callable[[int], None] | None = None,
) -> SegmentationResult:
    """Segment every object in an RGB image (array or file) and measure it."""
    lm = _as_model(model)
    t0 = time.perf_counter()
    if isinstance(image, (str, Path)):
        rgb, mpp = read_image(image, mpp)
    else:
        rgb = np.asarray(image)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 array (H, W, 3), got {rgb.dtype} {rgb.shape}")
    t_read = time.perf_counter()
    assumed = mpp is None
    eff_mpp = lm.config.mpp if assumed else float(mpp)
    scale = eff_mpp / lm.config.mpp
    work = rgb
    if abs(scale - 1.0) > MPP_TOLERANCE:
        # Bring the image to the model's pixel size; the network saw nuclei at that scale only.
        work = rescale(rgb, scale, channel_axis=-1, order=1, anti_aliasing=scale < 1, preserve_range=True)
        work = np.clip(work + 0.5, 0, 255).astype(np.uint8)
    probs = predict_probs(lm.net, work, lm.config.mean, lm.config.std, options, progress)
    t_infer = time.perf_counter()
    pp = postprocess or PostProcess.from_dict(lm.config.postprocess)
    if probs.shape[1:] != rgb.shape[:2]:
        # Back to the image's own grid before extracting objects: smooth outlines and true
        # perimeters, instead of nearest-neighbour blocks from resizing a label map.
        probs = resize(probs, (probs.shape[0],) + rgb.shape[:2], order=1, preserve_range=True, anti_aliasing=False)
        pp = pp.scaled(1.0 / scale**2)
    labels = instances_from_probs(probs, pp)
    t_post = time.perf_counter()
    # With no known pixel size the um columns stay empty: a guessed scale would look measured.
    table = measure_instances(labels, rgb, None if assumed else eff_mpp)
    t_measure = time.perf_counter()
    timings = {
        "read_s": t_read - t0,
        "infer_s": t_infer - t_read,
        "postprocess_s": t_post - t_infer,
        "measure_s": t_measure - t_post,
    }
    return SegmentationResult(labels, table, None if assumed else eff_mpp, assumed, timings)


def run_info(lm: LoadedModel, options: InferenceOptions, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Provenance recorded in every output folder's run.json."""
    import platform

    import torch

    info = {
        "pathseg_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "model": {"name": lm.name, "path": str(lm.path), "sha256": lm.sha256, "mpp": lm.config.mpp},
        "inference": {
            "window": options.window,
            "halo": options.halo,
            "batch_size": options.batch_size,
            "device": options.device,
            "precision": options.precision,
            "tta": options.tta,
        },
        "postprocess": lm.config.postprocess,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    info.update(extra or {})
    return info
