"""Cohorts on a 2-worker local Dask cluster: same labels as a serial run, failures and crashes recorded."""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from pathseg.cohort import _open_client, run_cohort
from pathseg.models import LoadedModel, ModelConfig, UNet, save_model
from pathseg.tiling import InferenceOptions
from pathseg.wsi import SlideOptions, segment_slide
from tests.slides import write_pyramid
from tests.wsi_helpers import ColourNet, colour_model, disc_slide

# Tiny tiles: a 256-px slide has 16 tiles, so progress has something to count.
SMALL = SlideOptions(inference=InferenceOptions(window=64, halo=16, batch_size=2, device="cpu"), tile=64, margin=32,
                     tissue=False, thumbnail=256)


class CrashNet(ColourNet):
    """The colour network, except that green input kills its process, as a crashing C reader would."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits, or SIGKILL on green."""
        if bool((x[:, 1] - x[:, 0] > 1.5).any()):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(x)


@pytest.fixture(scope="module")
def client():
    """One local cluster of 2 worker processes for the whole module, set up as run_cohort sets up its own."""
    with _open_client(None, 2, "cpu") as c:
        yield c


def _slide(path: Path, seed: int, colour: tuple[int, int, int] | None = None) -> Path:
    image, _ = disc_slide(256, 256, 12, seed=seed)
    if colour is not None:
        image[100:140, 100:140] = colour
    return write_pyramid(path, image, mpp=0.5, levels=2, tile=128)


class Recorder:
    """Collects progress(advance, total) calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, advance: int, total: int) -> None:
        self.calls.append((advance, total))

    @property
    def announced(self) -> list[int]:
        return sorted(t for a, t in self.calls if a == 0)

    @property
    def advanced(self) -> int:
        return sum(a for a, _ in self.calls)


def test_cohort_gives_serial_labels_and_records_a_corrupt_slide(tmp_path, client):
    good = [_slide(tmp_path / f"s{k}.ome.tif", seed=k) for k in range(3)]
    bad = tmp_path / "bad.svs"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    slides = [good[0], bad, good[1], good[2]]
    seen, progress = [], Recorder()
    report = run_cohort(slides, colour_model(0.5), tmp_path / "out", SMALL, progress=progress, on_file=seen.append,
                        client=client)

    assert [o.path for o in report.outcomes] == slides  # input order, whatever order they finished in
    assert [o.status for o in report.outcomes] == ["done", "failed", "done", "done"]
    assert report.outcomes[1].error.startswith(str(bad)) and report.n_failed == 1
    assert sorted(map(str, (o.path for o in seen))) == sorted(map(str, slides))  # once per slide
    serial_totals = []
    for path, outcome in zip(good, (report.outcomes[0], *report.outcomes[2:])):
        serial_progress = Recorder()
        serial = segment_slide(path, colour_model(0.5), out=None, options=SMALL, progress=serial_progress)
        serial_totals += serial_progress.announced
        assert outcome.folder == tmp_path / "out" / path.name.removesuffix(".ome.tif")
        labels = zarr.open_array(str(outcome.folder / "labels.zarr"))[:]
        assert np.array_equal(labels, serial.labels[:]) and labels.max() > 5
        assert outcome.n_objects == serial.summary["n_objects"]
    assert progress.announced == sorted(serial_totals)  # one announcement per slide that got tiled
    assert progress.advanced == sum(serial_totals)  # and the bar ends exactly full


def test_slides_with_one_name_do_not_share_a_folder(tmp_path, client):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _slide(tmp_path / "a" / "x.ome.tif", seed=1)
    second = _slide(tmp_path / "b" / "x.ome.tif", seed=2)
    report = run_cohort([first, second], colour_model(0.5), tmp_path / "out", SMALL, client=client)
    assert [o.status for o in report.outcomes] == ["done", "failed"]
    assert "same name as" in report.outcomes[1].error and report.outcomes[1].error.startswith(str(second))


def test_cli_cohort_on_a_running_scheduler(tmp_path, client):
    from typer.testing import CliRunner

    from pathseg.cli import app

    torch.manual_seed(0)
    net = UNet(width=4, levels=3).eval()
    save_model(tmp_path / "m", net, ModelConfig(arch_kwargs=net.config, mpp=0.5, postprocess={"min_area_px": 1}))
    a, b = _slide(tmp_path / "a.ome.tif", seed=3), _slide(tmp_path / "b.ome.tif", seed=4)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "segment", str(a), str(b), "--out", str(out), "--cohort", "--scheduler", client.scheduler.address,
        "--model", str(tmp_path / "m"), "--window", "64", "--halo", "16", "--tile", "64", "--margin", "16",
        "--no-tissue"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [(r["input"], r["kind"], r["status"]) for r in rows] == [(str(a), "slide", "done"), (str(b), "slide", "done")]
    assert (out / "a" / "run.json").exists() and (out / "b" / "labels.ome.tif").exists()


def test_a_slide_that_kills_its_worker_fails_and_the_others_finish(tmp_path, client):
    # Last in the module: the cluster restarts the killed workers, which takes a few seconds.
    lm = colour_model(0.5)
    crash = LoadedModel(CrashNet().eval(), lm.config, "crash", lm.sha256, lm.path)
    green = _slide(tmp_path / "green.ome.tif", seed=5, colour=(60, 200, 60))
    fine = [_slide(tmp_path / f"fine{k}.ome.tif", seed=6 + k) for k in range(2)]
    progress = Recorder()
    report = run_cohort([green, *fine], crash, tmp_path / "out", SMALL, progress=progress, client=client)
    # The model travels as a worker plugin: restarted workers get it back and still segment.
    assert [o.status for o in report.outcomes] == ["failed", "done", "done"]
    assert report.outcomes[0].error.startswith(str(green)) and "worker process died" in report.outcomes[0].error
    assert progress.advanced == sum(progress.announced)  # the crashed slide's share is closed, not left open
