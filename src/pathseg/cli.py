"""The `pathseg` command line: demo, segment, evaluate, train, synth, models."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from pathseg._version import __version__
from pathseg.cli_synth import synth_app, train_varnet_cmd
from pathseg.cli_tam import experiment_app, train_tam_cmd
from pathseg.errors import InputError, PathsegError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Deep-learning segmentation of histopathology images.")
train_app = typer.Typer(no_args_is_help=True, help="Train a model with pathseg's own recipes.")
app.add_typer(train_app, name="train")
app.add_typer(synth_app, name="synth")
train_app.command("varnet")(train_varnet_cmd)
train_app.command("tam")(train_tam_cmd)
app.add_typer(experiment_app, name="experiment")
err = Console(stderr=True)
out = Console()

DeviceOpt = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]")
WindowOpt = typer.Option(512, "--window", help="Inference window (px); 256 with --halo 64 is the paper's scheme.")
HaloOpt = typer.Option(64, "--halo", help="Context margin dropped from each window side (px).")
PrecisionOpt = typer.Option("auto", "--precision", help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16 or fp16")
TtaOpt = typer.Option(False, "--tta", help="Average over the 4 flips of each window: more accurate, 4x slower.")


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=err, transient=False,
    )


def _options(window: int, halo: int, batch_size: int, device: str, precision: str, multiple: int = 16, tta: bool = False):
    from pathseg.tiling import InferenceOptions, pick_device

    try:
        pick_device(device)
        return InferenceOptions(window=window, halo=halo, batch_size=batch_size, device=device, precision=precision,
                                multiple=multiple, tta=tta)
    except (ValueError, RuntimeError) as e:
        raise InputError(f"{str(e).splitlines()[0]}") from None


def _load(model: str, device: str, window: int, halo: int, batch_size: int, precision: str, tta: bool = False):
    """Load the model, then check the inference options against it."""
    from pathseg.models import load_model
    from pathseg.tiling import pick_device

    _options(window, halo, batch_size, device, precision, multiple=1)  # device/precision first: cheap
    lm = load_model(model, pick_device(device))
    return lm, _options(window, halo, batch_size, device, precision, getattr(lm.net, "required_multiple", 1), tta)


def _run_job(paths, lm, out_dir: Path, opts, mpp, overwrite: bool, slide_opts=None, roi=None, cohort: bool = False,
             scheduler: str | None = None, workers: int | None = None, model: Any = "") -> int:
    from pathseg.io.slide import is_slide
    from pathseg.jobs import segment_files, segment_slides

    slides = [p for p in paths if p.exists() and is_slide(p)]
    images = [p for p in paths if p not in slides]
    with _progress() as bar:
        # One bar over images (1 unit each) and slide tiles; slides announce their size when tiled.
        task = bar.add_task("segmenting", total=len(images) or None)
        totals = {"known": len(images)}

        def on_progress(advance: int, total: int) -> None:
            if advance == 0:
                totals["known"] += total
                bar.update(task, total=totals["known"])
            else:
                bar.advance(task, advance)

        def on_file(o) -> None:
            if o.path in images:
                bar.advance(task)
            if o.status == "failed":
                err.print(f"failed {o.error}", highlight=False, soft_wrap=True, markup=False)
            elif o.status == "skipped":
                err.print(f"skipped {o.path} (already done in {o.folder}; --overwrite redoes it)", highlight=False, markup=False)
            if o.mpp_assumed:
                err.print(f"warning {o.path}: no pixel size in the file; segmented at the model's scale, "
                          "um columns left empty (pass --mpp)", highlight=False, soft_wrap=True, markup=False)

        outcomes = []
        if images:
            outcomes += segment_files(images, lm, out_dir, opts, mpp=mpp, overwrite=overwrite, on_file=on_file).outcomes
        if slides and cohort:
            from pathseg.cohort import run_cohort

            outcomes += run_cohort(slides, model, out_dir, slide_opts, mpp=mpp, roi=roi, overwrite=overwrite,
                                   scheduler=scheduler, workers=workers, progress=on_progress, on_file=on_file).outcomes
        elif slides:
            outcomes += segment_slides(slides, lm, out_dir, slide_opts, mpp=mpp, roi=roi, overwrite=overwrite,
                                       progress=on_progress, on_file=on_file).outcomes
    from pathseg.io import write_table_csv

    rows = [
        {"input": str(o.path), "kind": "slide" if o.path in slides else "image", "status": o.status,
         "n_objects": o.n_objects, "seconds": round(o.seconds, 3), "mpp_assumed": o.mpp_assumed,
         "folder": str(o.folder or ""), "error": o.error}
        for o in outcomes
    ]
    write_table_csv(out_dir / "summary.csv", rows)
    n_failed = sum(o.status == "failed" for o in outcomes)
    done = sum(o.status == "done" for o in outcomes)
    out.print(f"{done} segmented, {len(paths) - done - n_failed} skipped, {n_failed} failed -> {out_dir}", highlight=False)
    return 1 if n_failed else 0


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("pathseg-demo"), "--out", help="Output folder (the demo replaces its own earlier outputs)."),
    device: str = DeviceOpt,
) -> None:
    """Segment the built-in sample image with the built-in nuclei model and write all outputs."""
    import numpy as np

    from pathseg.io import ensure_output_dir
    from pathseg.jobs import write_result
    from pathseg.pipeline import run_info, segment_image
    from pathseg.sample import SAMPLE_DESCRIPTION, SAMPLE_MPP, SAMPLE_NAME, sample_image

    t0 = time.perf_counter()
    lm, opts = _load("nuclei-he", device, 512, 64, 4, "auto")
    image = sample_image()
    ensure_output_dir(out_dir, overwrite=True)
    result = segment_image(image, lm, mpp=SAMPLE_MPP, options=opts)
    folder = out_dir / SAMPLE_NAME
    write_result(folder, image, result, run_info(lm, opts, {"input": SAMPLE_NAME, "input_description": SAMPLE_DESCRIPTION}))
    area = result.table["area_um2"]
    out.print(f"sample: {SAMPLE_DESCRIPTION}", highlight=False)
    out.print(
        f"{len(area)} nuclei, median area {float(np.median(area)) if len(area) else float('nan'):.1f} um^2, "
        f"{time.perf_counter() - t0:.1f} s; outputs in {folder}/ ({', '.join(sorted(p.name for p in folder.iterdir()))})",
        highlight=False,
    )


@app.command("segment")
def segment_cmd(
    inputs: list[str] = typer.Argument(..., help="Image files, folders or glob patterns."),
    model: str = typer.Option("nuclei-he", "--model", help="Built-in model name or a model folder."),
    out_dir: Path = typer.Option(..., "--out", help="Output folder; one sub-folder per image."),
    mpp: float | None = typer.Option(None, "--mpp", help="Pixel size in um/px (overrides file metadata)."),
    device: str = DeviceOpt,
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Windows per network call [images 4, slides 1]."),
    window: int | None = typer.Option(None, "--window", help="Inference window (px) [images 512, slides 1024]; 256 with --halo 64 is the paper's scheme."),
    halo: int = HaloOpt,
    precision: str = PrecisionOpt,
    tta: bool = TtaOpt,
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo images whose outputs already exist."),
    roi: str | None = typer.Option(None, "--roi", help="Slides: only this region, 'x,y,w,h' in level-0 px or a GeoJSON file."),
    tile: int = typer.Option(2048, "--tile", help="Slides: tile size read and inferred at once (working px)."),
    margin: int = typer.Option(128, "--margin", help="Slides: context for objects cut by tile borders (px, >= largest object radius)."),
    readers: int = typer.Option(2, "--readers", min=1, help="Slides: threads reading tiles ahead of the network."),
    no_tissue: bool = typer.Option(False, "--no-tissue", help="Slides: process every tile, not only detected tissue."),
    keep_probs: bool = typer.Option(False, "--keep-probs", help="Slides: keep the class-probability zarr."),
    cohort: bool = typer.Option(False, "--cohort", help="Slides: spread them over a Dask cluster (a local one by default)."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="With --cohort: address of a running Dask scheduler."),
    workers: int | None = typer.Option(None, "--workers", min=1, help="With --cohort and no --scheduler: local worker processes."),
    large_threshold_um2: float | None = typer.Option(
        None, "--large-threshold-um2",
        help="Objects of at least this area (um^2) are 'large', smaller ones 'small' (overrides the model's size classes, "
             "or adds them)."),
) -> None:
    """Segment images and whole slides; writes labels, overlay, table, QuPath GeoJSON and run.json for each."""
    from pathseg.io import list_images
    from pathseg.io.write import ensure_output_dir

    if mpp is not None and mpp <= 0:
        raise InputError(f"--mpp {mpp}: must be positive")
    if large_threshold_um2 is not None and not (0 < large_threshold_um2 < float("inf")):
        raise InputError(f"--large-threshold-um2 {large_threshold_um2}: must be a positive area in um^2")
    paths = list_images(inputs)
    if not paths:
        raise InputError(f"{' '.join(inputs)}: no images found")
    if roi is not None:
        from pathseg.tiling.tissue import parse_roi

        parse_roi(roi)  # a bad ROI is reported before any work starts
    # Images and slides have different defaults: slides are read in large tiles, where one
    # 1024-px window per call is about 1.3x faster than four 512-px windows at lower memory.
    lm, opts = _load(model, device, window or 512, halo, batch_size or 4, precision, tta)
    model_ref = model
    if large_threshold_um2 is not None:
        from pathseg.measure import objects_with_threshold

        # The outputs follow the model's objects config: the override goes there (and into the
        # fingerprints), and cohort workers get this loaded model rather than reloading the original.
        lm.config.objects = objects_with_threshold(lm.config.objects, large_threshold_um2)
        model_ref = lm
    slide_inference = _options(window or 1024, halo, batch_size or 1, device, precision,
                               getattr(lm.net, "required_multiple", 1), tta)
    try:
        from pathseg.wsi import SlideOptions

        slide_opts = SlideOptions(inference=slide_inference, tile=tile, margin=margin, readers=readers, tissue=not no_tissue,
                                  keep_probs=keep_probs)
    except ValueError as e:
        raise InputError(str(e)) from None
    ensure_output_dir(out_dir, overwrite=True)  # existing per-image folders are resumed, not clobbered
    raise typer.Exit(_run_job(paths, lm, out_dir, opts, mpp, overwrite, slide_opts, roi, cohort, scheduler, workers,
                              model_ref))


@app.command()
def evaluate(
    model: str = typer.Option("nuclei-he", "--model", help="Built-in model name or a model folder."),
    data: Path = typer.Option(..., "--data", help="Dataset folder with images/ and labels/."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the table and per-image values here."),
    mpp: float | None = typer.Option(None, "--mpp", help="Pixel size of the dataset images (um/px)."),
    device: str = DeviceOpt,
    batch_size: int = typer.Option(4, "--batch-size", min=1),
    window: int = WindowOpt,
    halo: int = HaloOpt,
    precision: str = PrecisionOpt,
    tta: bool = TtaOpt,
    no_watershed: bool = typer.Option(False, "--no-watershed", help="Connected components instead of watershed (ablation)."),
    groups_csv: Path | None = typer.Option(None, "--groups", help="CSV name,group (e.g. patient): adds per-group aggregates."),
) -> None:
    """Compare a model's instances with a labelled dataset: Dice, IoU, AJI, AJI+, PQ, F1, SBD."""
    from pathseg.evaluate import evaluate_dataset, read_groups
    from pathseg.io import list_samples

    list_samples(data)  # a bad dataset or groups file is reported before the model is loaded
    groups = read_groups(groups_csv) if groups_csv else None
    lm, opts = _load(model, device, window, halo, batch_size, precision, tta)
    with _progress() as bar:
        task = bar.add_task("evaluating", total=None)
        res = evaluate_dataset(lm, data, opts, mpp=mpp, watershed=not no_watershed, groups=groups,
                               on_image=lambda i, n: bar.update(task, completed=i, total=n))
    out.print(res["table"], highlight=False)
    if json_path is not None:
        from pathseg.io import write_json

        write_json(json_path, res)
        out.print(f"written {json_path}", highlight=False)


@train_app.command("nuclei")
def train_nuclei_cmd(
    data: list[Path] = typer.Option(..., "--data", help="Training dataset folder(s) (images/ + labels/)."),
    out_dir: Path = typer.Option(..., "--out", help="Run folder; an existing run with the same settings is resumed."),
    val: Path | None = typer.Option(None, "--val", help="Validation dataset; the best checkpoint by AJI is kept."),
    partial_fraction: float = typer.Option(1.0, "--partial-fraction", min=0.0, max=1.0, help="Keep this random fraction of annotated nuclei."),
    loss: str = typer.Option("weighted_ce", "--loss", help="weighted_ce (partial annotations) or ce."),
    steps: int = typer.Option(20000, "--steps", min=1),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    width: int = typer.Option(16, "--width", min=1, help="Channels of the first UNet level."),
    lr_decay_every: int = typer.Option(1000, "--lr-decay-every", min=1, help="Multiply the learning rate by 0.95 this often."),
    val_every: int = typer.Option(500, "--val-every", min=1),
    ckpt_every: int = typer.Option(250, "--ckpt-every", min=1),
    mpp: float = typer.Option(0.25, "--mpp", min=0.01, help="Pixel size of the training images (um/px); recorded in the model."),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads for torch (0 = default)."),
    device: str = DeviceOpt,
) -> None:
    """Train the nuclei UNet with the weighted-background loss of the partial-annotation paper."""
    from pathseg.losses import list_losses
    from pathseg.train import TrainConfig, train_nuclei

    if loss not in list_losses():
        raise InputError(f"--loss {loss}: unknown; choose from {', '.join(list_losses())}")
    for d in [*data, *([val] if val else [])]:
        if not d.is_dir():
            raise InputError(f"{d}: not a folder")
    cfg = TrainConfig(
        data=[str(d) for d in data], out=str(out_dir), val=str(val) if val else None, partial_fraction=partial_fraction,
        loss=loss, steps=steps, batch_size=batch_size, width=width, lr_decay_every=lr_decay_every,
        val_every=val_every, ckpt_every=ckpt_every, seed=seed, mpp=mpp, threads=threads, device=device,
    )
    with _progress() as bar:
        task = bar.add_task("training", total=steps)

        def progress(step: int, total: int, record: dict) -> None:
            bar.update(task, completed=step)
            if record:
                msg = f"step {step}: loss {record['loss']:.4f}"
                if "val" in record:
                    msg += "  val " + " ".join(f"{k} {v:.3f}" for k, v in record["val"].items())
                bar.console.print(msg, highlight=False)

        final = train_nuclei(cfg, progress)
    out.print(f"model written to {final} (use --model {final})", highlight=False)


@app.command()
def models() -> None:
    """List the built-in models and show their model cards."""
    from pathseg.models.checkpoint import CARD_FILE, list_builtin

    found = list_builtin()
    if not found:
        out.print("no built-in models are installed")
    for name, folder in found.items():
        card = folder / CARD_FILE
        out.rule(name)
        out.print(card.read_text() if card.is_file() else f"(no model card in {folder})", markup=False, highlight=False)


def _print_version(value: bool) -> None:
    if value:
        out.print(f"pathseg {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version, help="Print the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def main() -> None:
    """Console-script entry point: user errors become one line on stderr and exit code 2."""
    try:
        # Non-standalone mode returns the code of typer.Exit instead of raising it.
        rc = app(standalone_mode=False)
    except PathsegError as e:
        # Plain print, not rich: rich would wrap a long message over several lines.
        print(f"pathseg: error: {e}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("pathseg: interrupted; finished images are kept and a re-run resumes", highlight=False)
        sys.exit(130)
    except Exception as e:
        # Usage errors arrive here in non-standalone mode. Typer may vendor its own click, so
        # recognise them by shape (ClickException has show() and exit_code), not by class.
        if hasattr(e, "show") and hasattr(e, "exit_code"):
            e.show()
            sys.exit(2)
        if type(e).__name__ == "Abort":  # Ctrl-C inside click
            print("pathseg: interrupted; finished images are kept and a re-run resumes", file=sys.stderr)
            sys.exit(130)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)
