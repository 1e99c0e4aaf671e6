"""`pathseg train tam`, `pathseg experiment tam` and `pathseg synth tam` (macrophages in CD163 IHC)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pathseg.errors import InputError

experiment_app = typer.Typer(no_args_is_help=True, help="Reproduce a paper's experiment table with pathseg's recipes.")
err = Console(stderr=True)
out = Console()

_STRATEGY_HELP = "baseline (per-pixel cross-entropy), weights (per-pixel weights) or instance (discriminative embedding)"


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=False)


def _say(bar: Progress, name: str, step: int, record: dict) -> None:
    if record:
        msg = f"{name} step {step}: loss {record['loss']:.4f} lr {record['lr']:.2e}"
        if isinstance(record.get("val"), dict):
            msg += "  val " + " ".join(f"{k} {v:.3f}" for k, v in record["val"].items() if isinstance(v, float))
        if record.get("early_stop"):
            msg += "  (validation loss departed from training loss: stop)"
        bar.console.print(msg, highlight=False)


def _data_or_synthetic(data: Path | None, out_dir: Path) -> Path:
    if data is not None:
        if not data.is_dir():
            raise InputError(f"{data}: dataset folder not found")
        return data
    from pathseg.train.tam_data import write_synthetic_tam

    err.print(f"no --data: writing the synthetic CD163 dataset to {out_dir / 'data'}")
    return write_synthetic_tam(out_dir / "data")


def train_tam_cmd(
    out_dir: Path = typer.Option(..., "--out", help="Run folder; an existing run with the same settings is resumed."),
    data: Path | None = typer.Option(None, "--data", help="Dataset with train/ val/ [test/] (images/, labels/), or a flat "
                                     "images/ labels/ folder split 70/15/15. Default: the synthetic CD163 dataset."),
    arch: str = typer.Option("deeplab", "--arch", help="unet, segnet or deeplab (DeepLab-v3, MobileNet-v2)."),
    strategy: str = typer.Option("instance", "--strategy", help=_STRATEGY_HELP),
    groups: Path | None = typer.Option(None, "--groups", help="CSV image,group (patient or slide) for the 70/15/15 split."),
    steps: int = typer.Option(3000, "--steps", min=1, help="Upper bound on iterations (early stopping ends sooner)."),
    batch_size: int = typer.Option(4, "--batch-size", min=1),
    patch: int = typer.Option(224, "--patch", min=32, help="Training patch side (px; paper: 224)."),
    lr: float = typer.Option(1e-4, "--lr", min=0.0, help="Adam learning rate (paper: 1e-4, halved on a 15-iteration plateau)."),
    val_every: int = typer.Option(100, "--val-every", min=1),
    plateau_block: int = typer.Option(10, "--plateau-block", min=1,
                                      help="Steps averaged into one loss 'iteration' of the 15-iteration plateau rule."),
    embed_dim: int = typer.Option(8, "--embed-dim", min=1, help="Embedding dimensions (instance strategy)."),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads for torch (0 = default)."),
    workers: int = typer.Option(0, "--workers", min=0, help="Processes preparing augmented batches (use on a GPU)."),
    time_limit: float | None = typer.Option(None, "--time-limit", min=1, help="Stop after this many seconds of training."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]"),
) -> None:
    """Train one TAM model (UNet, SegNet or DeepLab-v3) with one strategy, with the TAM paper's recipe."""
    from pathseg.train.tam import TamTrainConfig, train_tam
    from pathseg.train.tam_experiment import ALIASES, parse_list

    arch_name = parse_list(arch, ALIASES, "arch")[0]
    strat = parse_list(strategy, ("baseline", "weights", "instance"), "strategy")[0]
    data = _data_or_synthetic(data, out_dir)
    cfg = TamTrainConfig(data=str(data), out=str(out_dir), arch=arch_name, strategy=strat, steps=steps,
                         batch_size=batch_size, patch=patch, lr=lr, plateau_block=plateau_block, val_every=val_every, embed_dim=embed_dim, seed=seed,
                         threads=threads, workers=workers, time_limit_s=time_limit, device=device,
                         groups=str(groups) if groups else None)
    with _progress() as bar:
        task = bar.add_task(f"{arch_name}/{strat}", total=steps)

        def progress(step: int, total: int, record: dict) -> None:
            bar.update(task, completed=step)
            _say(bar, f"{arch_name}-{strat}", step, record)

        final = train_tam(cfg, progress)
    out.print(f"model written to {final} (use --model {final})", highlight=False)


@experiment_app.command("tam")
def experiment_tam_cmd(
    out_dir: Path = typer.Option(Path("tam-experiment"), "--out", help="Experiment folder (runs/, tables, figure); resumes."),
    data: Path | None = typer.Option(None, "--data", help="TAM dataset (see `pathseg train tam --help`); default: synthetic CD163."),
    models: str = typer.Option("unet,segnet,deeplab", "--models", help="Comma-separated: unet, segnet, deeplab."),
    strategies: str = typer.Option("baseline,weights,instance", "--strategies", help="Comma-separated: " + _STRATEGY_HELP),
    groups: Path | None = typer.Option(None, "--groups", help="CSV image,group for the 70/15/15 split of a flat dataset."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Upper bound on iterations per run (default 3000)."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1),
    patch: int | None = typer.Option(None, "--patch", min=32, help="Training patch side (px; default 224)."),
    lr: float | None = typer.Option(None, "--lr", min=0.0),
    val_every: int | None = typer.Option(None, "--val-every", min=1),
    seed: int | None = typer.Option(None, "--seed"),
    threads: int | None = typer.Option(None, "--threads", min=0),
    workers: int | None = typer.Option(None, "--workers", min=0, help="Processes preparing augmented batches (GPU)."),
    time_limit: float | None = typer.Option(None, "--time-limit", min=1, help="Training seconds per run, at most."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu or cuda[:N]"),
) -> None:
    """Train and score every model x strategy; write the IoU/SBD table (Markdown, JSON) and a figure."""
    from pathseg.train.tam_experiment import ALIASES, base_config, parse_list, run_experiment

    model_list = parse_list(models, ALIASES, "models")
    strategy_list = parse_list(strategies, ("baseline", "weights", "instance"), "strategies")
    data = _data_or_synthetic(data, out_dir)
    base = base_config(dict(steps=steps, batch_size=batch_size, patch=patch, lr=lr, val_every=val_every, seed=seed, threads=threads,
                            workers=workers, time_limit_s=time_limit, device=device, groups=str(groups) if groups else None))
    with _progress() as bar:
        tasks: dict[str, int] = {}

        def progress(name: str, step: int, total: int, record: dict) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            bar.update(tasks[name], completed=step)
            _say(bar, name, step, record)

        result = run_experiment(data, out_dir, model_list, strategy_list, base, progress=progress)
    from pathseg.train.tam_experiment import format_table

    out.print(format_table(result["rows"]), highlight=False, markup=False)
    out.print(f"table: {out_dir / 'tam_table.md'}, {out_dir / 'tam_table.json'}; figure: {out_dir / 'tam_figure.png'}",
              highlight=False)
