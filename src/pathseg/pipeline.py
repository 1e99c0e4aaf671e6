"""Image -> instances -> measurements, in memory (`segment`) and to files (`segment_to_folder`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from skimage.transform import rescale, resize

from pathseg._version import __version__
from pathseg.instances import PostProcess, instances_from_probs
from pathseg.io import read_image
from pathseg.measure import measure_instances
from pathseg.measure.population import ObjectSpec, size_class
from pathseg.models import LoadedModel, load_model
from pathseg.stain.reinhard import make_normaliser
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


# Arrays above this many pixels go through the slide engine (tiles, bounded memory).
LARGE_PIXELS = 8192 * 8192


def segment(
    image: np.ndarray | str | Path,
    model: LoadedModel | str | Path = "nuclei-he",
    mpp: float | None = None,
    options: InferenceOptions | None = None,
    postprocess: PostProcess | None = None,
    progress: Callable[[int], None] | None = None,
) -> Any:
    """Segment every object in an image, a whole slide or a large array, in memory, and measure it.

    Returns a SegmentationResult (labels as a numpy array) for ordinary images, and for a
    slide file or an array above LARGE_PIXELS a ``pathseg.wsi.SlideResult`` whose labels are
    an in-memory zarr array (index it, e.g. ``result.labels[0:2048, 0:2048]``) and whose
    table centroids are in level-0 pixels.
    """
    lm = _as_model(model)
    if _wants_slide_engine(image):
        from pathseg.wsi import SlideOptions, segment_slide

        slide_opts = SlideOptions(inference=options) if options is not None else SlideOptions()
        return segment_slide(image, lm, out=None, mpp=mpp, options=slide_opts)
    return segment_image(image, lm, mpp, options, postprocess, progress)


def segment_image(
    image: np.ndarray | str | Path,
    model: LoadedModel | str | Path = "nuclei-he",
    mpp: float | None = None,
    options: InferenceOptions | None = None,
    postprocess: PostProcess | None = None,
    progress: Callable[[int], None] | None = None,
) -> SegmentationResult:
    """Segment every object in an RGB image (array or file) held in memory at once, and measure it."""
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
    norm = make_normaliser(lm.config.normalise, work)
    if norm is not None:
        work = norm(work)
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
    spec = ObjectSpec.from_config(lm.config.objects)
    if spec.sized:  # e.g. small / large TAMs; -1 where the area in µm² is unknown
        table["size_class"] = size_class(table["area_um2"], spec.threshold_um2)
    t_measure = time.perf_counter()
    timings = {
        "read_s": t_read - t0,
        "infer_s": t_infer - t_read,
        "postprocess_s": t_post - t_infer,
        "measure_s": t_measure - t_post,
    }
    return SegmentationResult(labels, table, None if assumed else eff_mpp, assumed, timings)


def _wants_slide_engine(image: Any) -> bool:
    if isinstance(image, (str, Path)):
        from pathseg.io.slide import is_slide

        return Path(image).is_file() and is_slide(Path(image))
    return isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[0] * image.shape[1] > LARGE_PIXELS


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
