"""Segment one whole slide: tissue -> streamed inference -> block instances -> slide outputs, resumable.

Per-slide folder ``out/<name>/``: ``labels.ome.tif`` (pyramidal instance mask for QuPath),
``labels.zarr`` (the same, chunked), ``objects.csv``, ``objects.geojson`` (QuPath detections
in level-0 px), ``summary.json``, ``overlay.png``, ``tissue.png``, ``area_histogram.png`` (models
with size classes) and ``run.json``, written last: its presence marks the slide as finished.
Work in progress lives in ``.work/`` (tile log, stored probabilities, finished blocks); a re-run
with the same settings resumes there.
"""

from __future__ import annotations

import dataclasses

import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pathseg._version import __version__
from pathseg.errors import InputError, OutputError
from pathseg.instances import PostProcess
from pathseg.io.slide import Slide, open_slide
from pathseg.io.write import _csv_cell, atomic_open, write_json
from pathseg.measure.population import ObjectSpec, size_class, write_area_histogram
from pathseg.models import LoadedModel, load_model
from pathseg.stain.reinhard import make_normaliser
from pathseg.tiling.tissue import (
    Roi,
    parse_roi,
    roi_mask,
    select_tiles,
    tissue_area_um2,
    tissue_mask,
)
from pathseg.wsi.blocks import Frame, PartStore, empty_part, process_block
from pathseg.wsi.engine import (
    SlideOptions,
    TileLog,
    Timings,
    fault_point,
    run_inference,
)
from pathseg.wsi.outputs import (
    GeoJsonStreamWriter,
    summarise_slide,
    write_ome_pyramid,
    write_overlay_lowres,
)

log = logging.getLogger(__name__)

# Within this relative difference a pyramid level is used at its own scale (no resampling).
LEVEL_TOLERANCE = 0.1
_NOT_TABLE = ("ring_counts", "ring_xy", "n_cut")
LABEL_CHUNK = 512

Progress = Callable[[int, int], None]  # (advance, total work units of this slide)


@dataclass
class SlideResult:
    """Objects of one slide: label array (zarr, working frame), column table, summary and provenance."""

    name: str
    status: str  # "done" or "skipped" (already finished in its folder)
    labels: Any  # zarr.Array (H, W) int32 in the working frame; None when skipped
    table: dict[str, np.ndarray]
    summary: dict[str, Any]
    frame: Frame | None
    folder: Path | None
    timings: dict[str, float] = field(default_factory=dict)


def _as_model(model: LoadedModel | str | Path) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else load_model(model)


def working_frame(slide: Slide, model_mpp: float, tile: int) -> tuple[Frame, float]:
    """The frame inference runs in: a pyramid level when one is within 10% of the model's mpp."""
    assert slide.mpp is not None
    w0, h0 = slide.dimensions
    for level, ds in enumerate(slide.level_downsamples):
        level_mpp = slide.mpp * ds
        if abs(level_mpp / model_mpp - 1.0) <= LEVEL_TOLERANCE:
            w, h = slide.level_dimensions[level]
            return Frame(h, w, tile, float(ds), level_mpp), level_mpp
    s = model_mpp / slide.mpp
    return Frame(max(1, round(h0 / s)), max(1, round(w0 / s)), tile, s, model_mpp), model_mpp


def fingerprint(source: Any, lm: LoadedModel, options: SlideOptions, mpp: float | None, roi: str | None) -> dict[str, Any]:
    """What must match for an existing slide folder to be resumed or skipped."""
    fp: dict[str, Any] = {"model_sha256": lm.sha256, "mpp_option": mpp, "roi": roi, "pathseg_version": __version__}
    if lm.config.objects:  # e.g. a size-class threshold overridden on the command line changes the outputs
        fp["objects"] = lm.config.objects
    if isinstance(source, (str, Path)):
        st = Path(source).stat()
        fp.update(input=str(Path(source).resolve()), input_size=st.st_size, input_mtime_ns=st.st_mtime_ns)
    elif isinstance(source, np.ndarray):
        # Arrays have no file identity: their shape and a hash of a strided sample stand in.
        sample = np.ascontiguousarray(source[:: max(1, source.shape[0] // 64), :: max(1, source.shape[1] // 64)])
        fp.update(input="array", input_shape=list(source.shape), input_sample_sha1=hashlib.sha1(sample).hexdigest())
    inf = options.inference
    fp.update(window=inf.window, halo=inf.halo, precision=inf.precision, tta=inf.tta, tile=options.tile_core,
              margin=options.margin, tissue=options.tissue, thumbnail=options.thumbnail)
    if roi and Path(roi).is_file():
        fp["roi"] = str(Path(roi).resolve())
        fp["roi_mtime_ns"] = Path(roi).stat().st_mtime_ns
    return fp


def _prepare_folder(folder: Path, fp: dict[str, Any], overwrite: bool) -> str:
    """'new', 'resume' or 'finished' for a slide folder; refuses to mix runs."""
    run_json, state = folder / "run.json", folder / ".work" / "state.json"
    previous = None
    for path in (run_json, state):
        if path.exists():
            try:
                previous = json.loads(path.read_text()).get("fingerprint")
            except (OSError, json.JSONDecodeError):
                previous = None
            kind = "finished" if path is run_json else "resume"
            if previous == fp and not overwrite:
                return kind
            if not overwrite:
                raise OutputError(f"{folder}: holds results of another input, model or settings; "
                                  "pass --overwrite or another --out")
    if overwrite and folder.exists():
        shutil.rmtree(folder)
    elif folder.exists() and any(p.name != ".work" for p in folder.iterdir()):  # .work alone: killed before it began
        if not overwrite:
            raise OutputError(f"{folder}: exists and is not a pathseg slide folder; pass --overwrite or another --out")
    return "new"


def segment_slide(
    source: str | Path | np.ndarray | Slide,
    model: LoadedModel | str | Path = "nuclei-he",
    out: Path | None = None,
    mpp: float | None = None,
    roi: str | Roi | None = None,
    options: SlideOptions | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> SlideResult:
    """Segment and measure every object of a slide; into ``out/<name>/`` or, with ``out=None``, in memory."""
    t_start = time.perf_counter()
    options = options or SlideOptions()
    lm = _as_model(model)
    wanted = int(lm.config.objects.get("slide_margin_px", 0) or 0)
    if wanted > options.margin:
        # Objects larger than nuclei (e.g. TAMs and their touching clusters) need more block context.
        options = dataclasses.replace(options, margin=wanted)
    slide = source if isinstance(source, Slide) else open_slide(source, mpp)
    try:
        return _segment(slide, source, lm, out, mpp, roi, options, overwrite, progress, t_start)
    finally:
        if slide is not source:
            slide.close()


def _segment(slide: Slide, source: Any, lm: LoadedModel, out: Path | None, mpp: float | None, roi: str | Roi | None,
             options: SlideOptions, overwrite: bool, progress: Progress | None, t_start: float) -> SlideResult:
    timings = Timings()
    if slide.mpp is None:
        if isinstance(source, (str, Path)):
            raise InputError(f"{source}: no pixel size (mpp) in the slide; pass --mpp")
        slide.mpp = lm.config.mpp  # an in-memory array: assume the model's scale, as for images
    roi_text = roi if isinstance(roi, str) else None
    roi_obj = parse_roi(roi) if isinstance(roi, str) else roi
    frame, work_mpp = working_frame(slide, lm.config.mpp, options.tile_core)
    folder = None if out is None else Path(out) / slide.name
    fp = fingerprint(source, lm, options, mpp, roi_text)
    if folder is not None:
        state = _prepare_folder(folder, fp, overwrite)
        if state == "finished":
            try:
                summary = json.loads((folder / "summary.json").read_text())
            except (OSError, json.JSONDecodeError):  # finished but summary lost: count from run.json
                summary = {"n_objects": json.loads((folder / "run.json").read_text()).get("n_objects", 0)}
            return SlideResult(slide.name, "skipped", None, {}, summary, frame, folder)
        work = folder / ".work"
        try:
            work.mkdir(parents=True, exist_ok=True)
            if state == "new":
                write_json(work / "state.json", {"fingerprint": fp})
        except OSError as exc:
            raise OutputError(f"{folder}: cannot write ({exc.strerror or exc})") from exc

    # Tissue (and ROI) on a thumbnail, then the tiles that overlap it.
    thumb, thumb_ds = slide.thumbnail(options.thumbnail)
    mask = tissue_mask(thumb) if options.tissue else np.ones(thumb.shape[:2], bool)
    if roi_obj is not None:
        mask &= roi_mask(roi_obj, mask.shape, thumb_ds)
    # Tissue is selected window by window: a tile is computed only where its windows hold
    # tissue, and windows beyond the slide's edge are never computed.
    rows, cols = frame.grid
    core = options.inference.window - 2 * options.inference.halo
    k = frame.tile // core
    fine = np.zeros((rows * k, cols * k), bool)
    fine_shape = (math.ceil(frame.height / core), math.ceil(frame.width / core))
    fine[: fine_shape[0], : fine_shape[1]] = select_tiles(mask, thumb_ds, core, frame.scale, fine_shape)
    per_tile = fine.reshape(rows, k, cols, k).transpose(0, 2, 1, 3)
    selected = per_tile.any(axis=(2, 3))
    tiles = [(int(r), int(c)) for r, c in zip(*np.nonzero(selected))]
    windows = {rc: per_tile[rc] for rc in tiles}
    total = 2 * len(tiles)
    if progress:
        progress(0, total)
    n_classes = len(lm.config.classes)
    # Instance-embedding models store their embedding channels after the class probabilities.
    n_stored = n_classes - 1 + int(getattr(lm.net, "embed_dim", 0) or 0)

    def store(name: str) -> Any:
        if folder is None:
            return zarr.storage.MemoryStore()
        return str((folder / ".work" / name) if name == "probs.zarr" else folder / name)

    try:
        probs, new_probs = _open_array(store("probs.zarr"), (n_stored, frame.height, frame.width),
                                       (n_stored, frame.tile, frame.tile), np.uint8)
        # Small label chunks: the pyramid and overlay writers read one chunk row at a time,
        # so their memory grows with chunk height x slide width (1792-px chunks: +0.6 GB at 40k px).
        labels, new_labels = _open_array(store("labels.zarr"), (frame.height, frame.width), (LABEL_CHUNK, LABEL_CHUNK),
                                         np.int32)
        if folder is not None and (new_probs or new_labels):
            # Records of finished work are only valid with the arrays they describe: an array
            # deleted since (or never written) invalidates them.
            shutil.rmtree(folder / ".work" / "parts", ignore_errors=True)
            if new_probs:
                (folder / ".work" / "tiles.log").unlink(missing_ok=True)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot write ({exc.strerror or exc})") from exc

    # One colour transform per slide, from its tissue on the thumbnail, so tiles match.
    norm = make_normaliser(lm.config.normalise, thumb, mask if mask.any() else None)

    def read(x: int, y: int, w: int, h: int) -> np.ndarray:
        rgb = slide.read_at(x, y, w, h, work_mpp)
        return norm(rgb) if norm is not None else rgb

    tile_log = TileLog(None if folder is None else folder / ".work" / "tiles.log")
    reused = {"tiles": len(tile_log.done), "blocks": 0}
    run_inference(lm.net, read, probs, tiles, cols, windows, lm.config.mean, lm.config.std, options, tile_log, timings,
                  on_tile=(lambda n: progress(n, total)) if progress else None)

    # Instances block by block, in raster order (global ids follow it).
    pp = PostProcess.from_dict(lm.config.postprocess)
    if abs(frame.mpp / lm.config.mpp - 1.0) > LEVEL_TOLERANCE:
        pp = pp.scaled((lm.config.mpp / frame.mpp) ** 2)
    parts = PartStore(None if folder is None else folder / ".work" / "parts")
    keep = None if roi_obj is None else roi_obj.contains
    id_start = 0
    computed = 0
    for r, c in tiles:
        index = r * cols + c
        if parts.has(index):
            id_start += parts.count(index)
            reused["blocks"] += 1
        else:
            t0 = time.perf_counter()
            try:
                part = process_block(r, c, frame, probs, labels, read, pp, options.margin, id_start, keep)
                parts.save(index, part)
            except OSError as exc:
                raise OutputError(f"{folder}: cannot write ({exc.strerror or exc})") from exc
            timings.post_s += time.perf_counter() - t0
            id_start += len(part["id"])
            computed += 1
            fault_point("block", computed)
        if progress:
            progress(1, total)

    # Slide outputs, from the finished parts.
    t0 = time.perf_counter()
    spec = ObjectSpec.from_config(lm.config.objects)
    table, n_cut = _collect(parts, [r * cols + c for r, c in tiles], folder, slide.name, spec)
    area_um2 = tissue_area_um2(mask, thumb_ds, slide.mpp)
    summary = summarise_slide(table, area_um2, size_threshold_um2=spec.threshold_um2, extra={
        "slide": slide.name, "vendor": slide.vendor, "dimensions": list(slide.dimensions), "bounds": list(slide.bounds),
        "mpp": slide.mpp, "working_mpp": work_mpp, "working_shape": [frame.height, frame.width],
        "tiles": rows * cols, "tiles_processed": len(tiles), "windows_computed": int(fine.sum()), "objects_larger_than_margin": n_cut,
    })
    if folder is not None:
        write_ome_pyramid(folder / "labels.ome.tif", labels, work_mpp, max_id=int(table["id"].max(initial=0)))
        centroids = np.stack([table["centroid_x"], table["centroid_y"]], 1) / frame.scale  # working frame
        write_overlay_lowres(folder / "overlay.png", thumb, labels, mask, centroids=centroids)
        _write_mask_png(folder / "tissue.png", mask)
        if spec.sized:
            write_area_histogram(folder / "area_histogram.png", table["area_um2"], spec.threshold_um2,
                                 f"{slide.name}: {len(table['id'])} {spec.name} objects")
        write_json(folder / "summary.json", summary)
    timings.write_s += time.perf_counter() - t0
    timings.wall_s = time.perf_counter() - t_start
    if folder is not None:
        write_json(folder / "run.json", {
            "pathseg_version": __version__, "fingerprint": fp, "model": {"name": lm.name, "sha256": lm.sha256},
            "options": _options_dict(options), "n_objects": len(table["id"]), "timings": timings.as_dict(),
            "resumed": reused,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        _finish_work(folder, options.keep_probs)
    return SlideResult(slide.name, "done", labels, table, summary, frame, folder, timings.as_dict())


def _open_array(store: Any, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: Any) -> tuple[Any, bool]:
    """The zarr array at ``store`` (created when absent) and whether it was created now."""
    if isinstance(store, str) and Path(store).exists():
        try:
            array = zarr.open_array(store, mode="r+")
        except (ValueError, KeyError, FileNotFoundError) as exc:
            raise OutputError(f"{store}: damaged work array ({exc}); pass --overwrite") from None
        if tuple(array.shape) != shape:
            raise OutputError(f"{store}: holds an array of another shape {array.shape}; pass --overwrite")
        return array, False
    return zarr.create_array(store=store, shape=shape, chunks=chunks, dtype=dtype, fill_value=0), True


def _collect(parts: PartStore, indices: list[int], folder: Path | None, name: str,
             spec: ObjectSpec | None = None) -> tuple[dict[str, np.ndarray], int]:
    """Concatenate the parts' tables; with a folder, stream objects.csv and objects.geojson on the way.

    With size classes (``spec.sized``) a ``size_class`` column is derived from ``area_um2``
    here, not stored in the parts, so that the parts do not depend on the threshold.
    """
    spec = spec or ObjectSpec()
    columns: dict[str, list[np.ndarray]] = {}
    empty = {k: v for k, v in empty_part().items() if k not in _NOT_TABLE}
    if spec.sized:
        empty["size_class"] = np.zeros(0, np.int64)
    n_cut = 0
    with contextlib.ExitStack() as stack:  # on any error both temporary files are removed
        writer = geo = None
        if folder is not None:
            geo = stack.enter_context(GeoJsonStreamWriter(folder / "objects.geojson", classification=spec.name,
                                                          id_prefix=name, classes=spec.geojson_classes()))
            text = io.TextIOWrapper(stack.enter_context(atomic_open(folder / "objects.csv")), encoding="utf-8", newline="")
            stack.callback(text.detach)  # atomic_open closes and fsyncs the file itself
            stack.callback(text.flush)
            writer = csv.writer(text)
            writer.writerow(list(empty))
        for index in indices:
            part = parts.load(index)
            n_cut += int(part["n_cut"])
            table = {k: v for k, v in part.items() if k not in _NOT_TABLE}
            codes = size_class(table["area_um2"], spec.threshold_um2) if spec.sized else None
            if codes is not None:
                table["size_class"] = codes
            for k, v in table.items():
                columns.setdefault(k, []).append(v)
            if writer is None or not len(table["id"]):
                continue
            for row in zip(*(table[k].tolist() for k in table)):
                writer.writerow([_csv_cell(v) for v in row])
            rings = np.split(part["ring_xy"], np.cumsum(part["ring_counts"])[:-1])
            # The class code is the object's QuPath class, not a measurement: measurement names stay as for nuclei.
            geo.add(table["id"], rings, {k: v for k, v in table.items() if k not in ("id", "size_class")}, codes)
    return {k: (np.concatenate(columns[k]) if k in columns else v) for k, v in empty.items()}, n_cut


def _write_mask_png(path: Path, mask: np.ndarray) -> None:
    from PIL import Image

    with atomic_open(path) as fh:
        Image.fromarray(mask.astype(np.uint8) * 255).save(fh, format="PNG")


def _options_dict(options: SlideOptions) -> dict[str, Any]:
    inf = options.inference
    return {"window": inf.window, "halo": inf.halo, "batch_size": inf.batch_size, "device": inf.device,
            "precision": inf.precision, "tta": inf.tta, "tile": options.tile_core, "margin": options.margin,
            "readers": options.readers, "tissue": options.tissue}


def _finish_work(folder: Path, keep_probs: bool) -> None:
    work = folder / ".work"
    try:  # the slide is finished (run.json is written): cleaning up must not turn it into a failure
        if keep_probs and (work / "probs.zarr").exists():
            shutil.rmtree(folder / "probs.zarr", ignore_errors=True)
            (work / "probs.zarr").replace(folder / "probs.zarr")
    except OSError as exc:
        log.warning("%s: could not keep the probabilities (%s); they stay in %s", folder, exc, work)
        return
    shutil.rmtree(work, ignore_errors=True)

