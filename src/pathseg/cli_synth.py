"""`pathseg synth` (synthetic histology, colour fitting) and `pathseg train varnet`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pathseg.errors import InputError

synth_app = typer.Typer(
    no_args_is_help=False, invoke_without_command=True,
    help="Generate synthetic histology with exact ground truth from a scene script (built-in or YAML).",
)
err = Console(stderr=True)
out = Console()


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=err, transient=False)


def _parse_size(size: str | None) -> tuple[int, int] | None:
    if size is None:
        return None
    parts = size.lower().replace("x", ",").split(",")
    try:
        vals = [int(p) for p in parts if p.strip()]
    except ValueError:
        vals = []
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) < 16 or max(vals) > 8192:
        raise InputError(f"--size {size}: expected H,W (or one number) between 16 and 8192 px")
    return vals[0], vals[1]


@synth_app.callback()
def synth(
    ctx: typer.Context,
    scene: str = typer.Option("he-nuclei", "--scene", help="Built-in scene name or a YAML scene script."),
    n: int = typer.Option(16, "--n", min=1, help="Number of images."),
    out_dir: Path | None = typer.Option(None, "--out", help="Output dataset folder (default: synth-SCENE)."),
    seed: int = typer.Option(0, "--seed", help="Image i uses seed + i: the same seeds give the same images."),
    size: str | None = typer.Option(None, "--size", help="H,W in px (or one number); default: the scene's size."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a folder made with other settings."),
    list_scenes_: bool = typer.Option(False, "--list", help="List the built-in scenes and exit."),
) -> None:
    """Write n synthetic images with clean image, mask, instance map and object table (a pathseg dataset)."""
    if ctx.invoked_subcommand is not None:
        return
    from pathseg.synth import list_scenes, load_scene, write_dataset

    if list_scenes_:
        for name in list_scenes():
            sc = load_scene(name)
            out.print(f"{name:20s} {getattr(sc, 'description', '') or ''}", highlight=False, markup=False)
        raise typer.Exit(0)
    sc = load_scene(scene)
    dims = _parse_size(size)
    folder = out_dir or Path(f"synth-{sc.name}")
    with _progress() as bar:
        task = bar.add_task(f"synth {sc.name}", total=n)
        write_dataset(sc, folder, n=n, seed=seed, size=dims, overwrite=overwrite,
                      progress=lambda i: bar.update(task, completed=i))
    out.print(f"{n} images of scene {sc.name} -> {folder} (images/ = noisy u0, clean/, masks/, labels/ = instances, "
              "objects/)", highlight=False)


@synth_app.command("fit-colours")
def fit_colours_cmd(
    data: Path = typer.Option(..., "--data", help="Dataset folder with images/ and labels/ (real annotated patches)."),
    out_file: Path = typer.Option(..., "--out", help="Colour file to write (JSON)."),
    reference: Path | None = typer.Option(None, "--reference", help="Reinhard-normalise every image to this one first."),
    cohorts: int = typer.Option(3, "--cohorts", min=1, help="Colour cohorts per category."),
    background_clusters: int = typer.Option(2, "--background-clusters", min=1, help="Background colour categories."),
    textures: bool = typer.Option(False, "--textures", help="Also write a lattice texture bank (<out>.textures.npz)."),
    max_images: int | None = typer.Option(None, "--max-images", min=1, help="Use at most this many images."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing colour file."),
) -> None:
    """Estimate mean colours, noise and texture covariances of real patches for scene scripts."""
    from pathseg.errors import OutputError
    from pathseg.synth.colour import fit_colours_cli

    if not data.is_dir():
        raise InputError(f"{data}: not a folder")
    bank = out_file.with_name(f"{out_file.name.removesuffix('.json')}.textures.npz")
    for path in (out_file, bank) if textures else (out_file,):
        if path.exists() and not overwrite:
            raise OutputError(f"{path}: exists; pass --overwrite to replace it")
    summary = fit_colours_cli(data, out_file, reference, cohorts, background_clusters, textures, max_images)
    for key, value in summary.items():
        out.print(f"{key}: {value}", highlight=False, markup=False)
    out.print(f"written {out_file}", highlight=False)


def train_varnet_cmd(
    scenario: str = typer.Option(..., "--scenario", help="Built-in scene name or YAML scene script to train on."),
    out_dir: Path = typer.Option(..., "--out", help="Run folder; an existing run with the same settings is resumed."),
    arch: str = typer.Option("varnet", "--arch", help="varnet (the paper's network) or unet (the comparison)."),
    steps: int = typer.Option(1500, "--steps", min=1, help="Adam iterations (the paper: 1500)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    size: int = typer.Option(96, "--size", min=32, help="Side of the generated training images (px)."),
    lr: float = typer.Option(1e-4, "--lr", min=0.0),
    n_train: int = typer.Option(800, "--n-train", min=1, help="Fixed pool of training images (seeds 0..n-1)."),
    n_val: int = typer.Option(32, "--n-val", min=1, help="Held-out synthetic images for validation."),
    nt: int = typer.Option(10, "--nt", min=1, help="Variational steps N_t."),
    no_zero_mean_u: bool = typer.Option(False, "--no-zero-mean-u", help="Drop the zero-mean constraint on K^u (paper, scenario 1)."),
    val_every: int = typer.Option(100, "--val-every", min=1),
    ckpt_every: int = typer.Option(50, "--ckpt-every", min=1),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads for torch (0 = default)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]"),
) -> None:
    """Train the variational network (or a UNet) for joint denoising and segmentation on synthetic data."""
    from pathseg.synth import load_scene
    from pathseg.train.varnet import VarNetTrainConfig, train_varnet

    if arch not in ("varnet", "unet"):
        raise InputError(f"--arch {arch}: choose varnet or unet")
    load_scene(scenario)  # a bad script is reported before anything is written
    cfg = VarNetTrainConfig(
        scenario=scenario, out=str(out_dir), arch=arch, steps=steps, batch_size=batch_size, size=size, lr=lr,
        n_train=n_train, n_val=n_val, steps_nt=nt, zero_mean_u=not no_zero_mean_u, val_every=val_every,
        ckpt_every=ckpt_every, seed=seed, threads=threads, device=device,
    )
    with _progress() as bar:
        task = bar.add_task(f"training {arch}", total=steps)

        def progress(step: int, total: int, record: dict) -> None:
            bar.update(task, completed=step)
            if record:
                msg = f"step {step}: " + " ".join(
                    f"{k} {v:.4f}" for k, v in record.items() if isinstance(v, float))
                if isinstance(record.get("val"), dict):
                    # psnr_uT is None for the UNet, which has no reconstruction.
                    msg += "  val " + " ".join(f"{k} {v:.3f}" for k, v in record["val"].items() if isinstance(v, float))
                bar.console.print(msg, highlight=False)

        final = train_varnet(cfg, progress)
    out.print(f"model written to {final} (use --model {final})", highlight=False)
