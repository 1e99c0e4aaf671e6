"""Batch jobs over many images: per-image output folders, resume, one failure never stops the rest."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pathseg.errors import PathsegError
from pathseg.io import (
    read_image,
    write_geojson,
    write_json,
    write_label_map,
    write_overlay,
    write_table_csv,
)
from pathseg.measure.population import ObjectSpec, population_summary, size_class, write_area_histogram
from pathseg.models import LoadedModel
from pathseg.pipeline import SegmentationResult, run_info, segment_image
from pathseg.tiling import InferenceOptions

log = logging.getLogger(__name__)

OUTPUT_FILES = ("labels.png", "overlay.png", "objects.csv", "objects.geojson", "run.json")
# Written too when the model's objects have size classes (ModelConfig.objects["size_classes"]).
SIZE_CLASS_FILES = ("population.json", "area_histogram.png")


@dataclass
class FileOutcome:
    """What happened to one input file."""

    path: Path
    status: str  # "done", "skipped" (already done), "failed"
    n_objects: int = 0
    seconds: float = 0.0
    error: str = ""
    folder: Path | None = None
    mpp_assumed: bool = False


@dataclass
class JobReport:
    """Outcomes of a whole job, in input order."""

    outcomes: list[FileOutcome] = field(default_factory=list)

    @property
    def n_failed(self) -> int:
        """Number of inputs that failed."""
        return sum(o.status == "failed" for o in self.outcomes)


def write_result(folder: Path, image: np.ndarray, result: SegmentationResult, info: dict[str, Any],
                 objects: dict[str, Any] | None = None) -> None:
    """Write the label map, overlay, table, QuPath GeoJSON and run.json of one image.

    ``objects`` is the model's ModelConfig.objects: the objects' QuPath class name and, with
    size classes, a ``size_class`` column, per-class GeoJSON classes, population.json and
    area_histogram.png. run.json is written last: its presence marks the folder as complete,
    which is what lets an interrupted job resume without redoing finished images.
    """
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    spec = ObjectSpec.from_config(objects)
    labels = result.labels
    table = dict(result.table)
    if spec.sized:
        table["size_class"] = size_class(table["area_um2"], spec.threshold_um2)
    label_name = "labels.png" if labels.max(initial=0) <= 65535 else "labels.tif"
    write_label_map(folder / label_name, labels)
    write_overlay(folder / "overlay.png", image, labels)
    write_table_csv(folder / "objects.csv", table)
    write_geojson(folder / "objects.geojson", labels, table, classification=spec.name,
                  classes=spec.geojson_classes() or None)
    if spec.sized:
        # The whole image is the reference area: images carry no tissue mask. Unknown pixel size: no density.
        area_mm2 = labels.shape[0] * labels.shape[1] * result.mpp**2 / 1e6 if result.mpp is not None else None
        write_json(folder / "population.json", dict(population_summary(table, area_mm2, spec.threshold_um2),
                                                    name=spec.name, classes=list(spec.names), mpp=result.mpp))
        write_area_histogram(folder / "area_histogram.png", table["area_um2"], spec.threshold_um2,
                             f"{Path(str(info.get('input', folder.name))).name}: {len(table['id'])} {spec.name} objects")
    timings = dict(result.timings, write_s=time.perf_counter() - t0)
    info = dict(info, n_objects=len(result.table["id"]), mpp=result.mpp, mpp_assumed=result.mpp_assumed, timings=timings,
                image_shape=list(image.shape), label_file=label_name)
    write_json(folder / "run.json", info)


def fingerprint(path: Path, lm: LoadedModel, options: InferenceOptions, mpp: float | None) -> dict[str, Any]:
    """What must match for an existing output folder to count as this job's finished result."""
    st = path.stat()
    return {
        "input": str(path.resolve()),
        "input_size": st.st_size,
        "input_mtime_ns": st.st_mtime_ns,
        "model_sha256": lm.sha256,
        "mpp_option": mpp,
        "window": options.window,
        "halo": options.halo,
        "precision": options.precision,
        "tta": options.tta,
        # Only when set (e.g. size classes), so that folders of models without it still match.
        **({"objects": lm.config.objects} if lm.config.objects else {}),
    }


def _previous(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def segment_files(
    paths: Sequence[Path],
    lm: LoadedModel,
    out: Path,
    options: InferenceOptions,
    mpp: float | None = None,
    overwrite: bool = False,
    on_file: Callable[[FileOutcome], None] | None = None,
) -> JobReport:
    """Segment every path into ``out/<stem>/``; finished folders are skipped unless overwrite."""
    report = JobReport()
    seen: dict[str, Path] = {}
    for path in paths:
        t0 = time.perf_counter()
        stem = path.stem
        folder = out / stem
        outcome = FileOutcome(path=path, status="done", folder=folder)
        try:
            if stem in seen:
                raise PathsegError(f"{path}: same name as {seen[stem]}; their outputs would collide, rename one")
            seen[stem] = path
            fp = fingerprint(path, lm, options, mpp) if path.exists() else {}
            prev = _previous(folder) if folder.exists() else None
            if prev is not None and not overwrite:
                if prev.get("fingerprint") != fp:
                    raise PathsegError(f"{folder}: holds results of another input, model or settings; pass --overwrite or another --out")
                outcome.status = "skipped"
                outcome.n_objects = int(prev.get("n_objects", 0))
                outcome.mpp_assumed = bool(prev.get("mpp_assumed", False))
                report.outcomes.append(outcome)
                if on_file:
                    on_file(outcome)
                continue
            image, file_mpp = read_image(path, mpp)
            result = segment_image(image, lm, mpp=file_mpp, options=options)
            if folder.exists() and overwrite:
                shutil.rmtree(folder)
            info = run_info(lm, options, {"input": str(path), "fingerprint": fp})
            write_result(folder, image, result, info, lm.config.objects)
            outcome.n_objects = int(result.labels.max(initial=0))
            outcome.mpp_assumed = result.mpp_assumed
        except PathsegError as e:
            outcome.status, outcome.error = "failed", str(e)
        except (ValueError, OSError, MemoryError, RuntimeError) as e:  # RuntimeError: e.g. CUDA out of memory
            outcome.status, outcome.error = "failed", f"{path}: {type(e).__name__}: {e}"
        outcome.seconds = time.perf_counter() - t0
        report.outcomes.append(outcome)
        if on_file:
            on_file(outcome)
    return report


def segment_one_slide(
    path: Path,
    lm: LoadedModel,
    out: Path,
    options: Any,  # pathseg.wsi.SlideOptions
    mpp: float | None = None,
    roi: str | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> FileOutcome:
    """Segment one whole slide into ``out/<name>/``; any failure is caught and recorded in the outcome."""
    from pathseg.wsi import segment_slide

    t0 = time.perf_counter()
    outcome = FileOutcome(path=path, status="done")
    try:
        result = segment_slide(path, lm, out=out, mpp=mpp, roi=roi, options=options, overwrite=overwrite,
                               progress=progress)
        outcome.status = result.status
        outcome.folder = result.folder
        outcome.n_objects = int(result.summary.get("n_objects", 0))
    except PathsegError as e:
        outcome.status, outcome.error = "failed", str(e)
    except Exception as e:  # noqa: BLE001 - one slide's failure, whatever it is, must not stop a cohort
        log.exception("%s: failed", path)
        outcome.status, outcome.error = "failed", f"{path}: {type(e).__name__}: {e}"
    outcome.seconds = time.perf_counter() - t0
    return outcome


def segment_slides(
    paths: Sequence[Path],
    lm: LoadedModel,
    out: Path,
    options: Any,
    mpp: float | None = None,
    roi: str | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    on_file: Callable[[FileOutcome], None] | None = None,
) -> JobReport:
    """Segment whole slides one after another in this process; a failing slide never stops the rest."""
    report = JobReport()
    for path in paths:
        outcome = segment_one_slide(path, lm, out, options, mpp, roi, overwrite, progress)
        report.outcomes.append(outcome)
        if on_file:
            on_file(outcome)
    return report
