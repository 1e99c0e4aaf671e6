"""The slide engine: objects across tile borders, resume after kill -9, level-0 coordinates, bad input."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from scipy import ndimage as ndi
from tests.slides import write_pyramid

from pathseg.errors import OutputError
from pathseg.tiling import InferenceOptions
from pathseg.wsi import SlideOptions, segment_slide
from pathseg.wsi.blocks import PartStore
from tests.wsi_helpers import colour_model, disc_slide, same_partition

ROOT = Path(__file__).resolve().parents[1]
# Tiny tiles so that a 300-px slide has dozens of tiles and many discs cross their borders.
SMALL = SlideOptions(inference=InferenceOptions(window=64, halo=16, batch_size=2, device="cpu"), tile=64, margin=32,
                     tissue=False, thumbnail=256)


def _crossing(labels: np.ndarray, tile: int) -> int:
    boxes = [b for b in ndi.find_objects(labels) if b is not None]
    return sum((b[0].start // tile != (b[0].stop - 1) // tile) or (b[1].start // tile != (b[1].stop - 1) // tile)
               for b in boxes)


def test_objects_cut_by_tile_borders_become_one_object():
    image, truth = disc_slide(300, 380, 70, seed=1)
    assert _crossing(truth, 64) >= 15  # the test means something only if many discs straddle tiles
    res = segment_slide(image, colour_model(0.5), out=None, mpp=0.5, options=SMALL)
    labels = np.asarray(res.labels[:])
    assert same_partition(labels, truth)  # no halves, no duplicates, nothing lost
    assert len(res.table["id"]) == truth.max() == len(np.unique(labels)) - 1
    assert sorted(res.table["id"].tolist()) == list(range(1, truth.max() + 1))
    assert res.summary["n_objects"] == truth.max()


def _polygon_centroid(ring: np.ndarray) -> np.ndarray:
    x, y = ring[:, 0], ring[:, 1]
    cross = x[:-1] * y[1:] - x[1:] * y[:-1]
    area = cross.sum() / 2
    return np.array([((x[:-1] + x[1:]) * cross).sum(), ((y[:-1] + y[1:]) * cross).sum()]) / (6 * area)


def test_geojson_and_table_are_in_level0_pixels(tmp_path):
    # Slide at 0.25 um/px with a 2x level; the model works at 0.5, so level 1 is read (scale 2).
    image, truth = disc_slide(512, 512, 30, seed=2, radius=(10, 18))
    path = write_pyramid(tmp_path / "s.ome.tif", image, mpp=0.25, levels=2, tile=128)
    res = segment_slide(path, colour_model(0.5), out=tmp_path / "out", options=SMALL)
    assert res.frame.scale == pytest.approx(2.0) and res.frame.height == 256
    centres = np.array(ndi.center_of_mass(truth > 0, truth, range(1, truth.max() + 1)))  # (y, x) level 0
    got = np.stack([res.table["centroid_y"], res.table["centroid_x"]], 1)
    dist = np.linalg.norm(centres[:, None] - got[None], axis=2).min(1)
    assert len(got) == truth.max() and dist.max() < 1.5
    features = json.loads((tmp_path / "out" / "s" / "objects.geojson").read_text())["features"]
    # Polygon centroids, from pixel-edge to pixel-centre convention (-0.5).
    ring_centres = np.array([_polygon_centroid(np.array(f["geometry"]["coordinates"][0]))[::-1] - 0.5 for f in features])
    assert np.linalg.norm(centres[:, None] - ring_centres[None], axis=2).min(1).max() < 1.5
    nearest = np.linalg.norm(got[:, None] - centres[None], axis=2).argmin(1)
    true_area_um2 = np.bincount(truth.ravel())[1:][nearest] * 0.25**2
    assert np.allclose(res.table["area_um2"], true_area_um2, rtol=0.15)


def _run_script(src: Path, out: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    code = (
        "import sys; from pathlib import Path; from tests.test_wsi_engine import SMALL; "
        "from tests.wsi_helpers import colour_model; from pathseg.wsi import segment_slide; "
        "segment_slide(sys.argv[1], colour_model(0.5), out=Path(sys.argv[2]), options=SMALL)"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("PATHSEG_FAULT", None)
    if fault:
        env["PATHSEG_FAULT"] = fault
    return subprocess.run([sys.executable, "-c", code, str(src), str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("fault", ["tile:5", "block:4"])
def test_kill_9_then_resume_gives_identical_results(tmp_path, fault):
    image, _ = disc_slide(256, 320, 50, seed=3)
    src = write_pyramid(tmp_path / "slide.ome.tif", image, mpp=0.5, levels=1, tile=64)
    whole = _run_script(src, tmp_path / "a")
    assert whole.returncode == 0, whole.stderr
    killed = _run_script(src, tmp_path / "b", fault)
    assert killed.returncode == -9, killed.stderr
    assert not (tmp_path / "b" / "slide" / "run.json").exists()
    resumed = _run_script(src, tmp_path / "b")
    assert resumed.returncode == 0, resumed.stderr
    a, b = tmp_path / "a" / "slide", tmp_path / "b" / "slide"
    run = json.loads((b / "run.json").read_text())
    kind, n = fault.split(":")
    if kind == "tile":
        assert run["resumed"]["tiles"] == int(n)  # finished tiles were not recomputed
    else:
        assert run["resumed"] == {"tiles": 20, "blocks": int(n)}
    assert np.array_equal(zarr.open_array(str(a / "labels.zarr"))[:], zarr.open_array(str(b / "labels.zarr"))[:])
    for name in ("objects.csv", "objects.geojson", "summary.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert not (b / ".work").exists()


def test_in_memory_run_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image, truth = disc_slide(200, 200, 20, seed=4)
    res = segment_slide(image, colour_model(0.5), mpp=0.5, options=SMALL)
    assert res.folder is None and list(tmp_path.iterdir()) == []
    assert same_partition(np.asarray(res.labels[:]), truth)


def test_slide_without_tissue_gives_empty_results(tmp_path):
    glass = np.full((300, 300, 3), 244, np.uint8)
    path = write_pyramid(tmp_path / "glass.ome.tif", glass, mpp=0.5, levels=1, tile=64)
    opts = SlideOptions(inference=SMALL.inference, tile=64, margin=32, tissue=True, thumbnail=256)
    res = segment_slide(path, colour_model(0.5), out=tmp_path / "out", options=opts)
    folder = tmp_path / "out" / "glass"
    assert res.summary["n_objects"] == 0 and res.summary["tiles_processed"] == 0
    assert (folder / "run.json").exists() and (folder / "objects.csv").read_text().startswith("id,")
    assert json.loads((folder / "objects.geojson").read_text())["features"] == []


def test_tissue_detection_skips_glass_tiles(tmp_path):
    image, truth = disc_slide(320, 320, 8, seed=5, tissue=(80, 80, 176, 176))
    path = write_pyramid(tmp_path / "t.ome.tif", image, mpp=0.5, levels=1, tile=64)
    opts = SlideOptions(inference=SMALL.inference, tile=64, margin=32, tissue=True, thumbnail=320)
    res = segment_slide(path, colour_model(0.5), out=tmp_path / "out", options=opts)
    assert res.summary["tiles_processed"] == 4  # of 25: the 2 x 2 tiles under the tissue
    assert same_partition(np.asarray(res.labels[:]), truth)


def _fail_part_save(monkeypatch, nth: int, code: int, text: str):
    """Make the nth save of a finished block fail with OSError(code); return the real method."""
    real, calls = PartStore.save, {"n": 0}

    def failing(self, index, part):
        calls["n"] += 1
        if calls["n"] == nth:
            raise OSError(code, text)
        return real(self, index, part)

    monkeypatch.setattr(PartStore, "save", failing)
    return real


def test_disk_full_while_writing_leaves_no_final_output_and_resumes(tmp_path, monkeypatch):
    image, truth = disc_slide(200, 200, 20, seed=6)
    path = write_pyramid(tmp_path / "d.ome.tif", image, mpp=0.5, levels=1, tile=64)
    real = _fail_part_save(monkeypatch, 3, errno.ENOSPC, "No space left on device")
    with pytest.raises(OutputError, match="No space left"):
        segment_slide(path, colour_model(0.5), out=tmp_path / "out", options=SMALL)
    folder = tmp_path / "out" / "d"
    assert not (folder / "run.json").exists() and not (folder / "objects.csv").exists()
    monkeypatch.setattr(PartStore, "save", real)
    res = segment_slide(path, colour_model(0.5), out=tmp_path / "out", options=SMALL)
    assert same_partition(np.asarray(res.labels[:]), truth)


def test_other_settings_in_the_folder_are_not_overwritten(tmp_path):
    image, _ = disc_slide(128, 128, 5, seed=7)
    path = write_pyramid(tmp_path / "o.ome.tif", image, mpp=0.5, levels=1, tile=64)
    segment_slide(path, colour_model(0.5), out=tmp_path / "out", options=SMALL)
    again = segment_slide(path, colour_model(0.5), out=tmp_path / "out", options=SMALL)
    assert again.status == "skipped"
    other = SlideOptions(inference=SMALL.inference, tile=64, margin=16, tissue=False)
    with pytest.raises(OutputError, match="--overwrite"):
        segment_slide(path, colour_model(0.5), out=tmp_path / "out", options=other)
    assert segment_slide(path, colour_model(0.5), out=tmp_path / "out", options=other, overwrite=True).status == "done"


def test_unwritable_output_is_a_clear_error(tmp_path):
    image, _ = disc_slide(128, 128, 5, seed=8)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="file"):
        segment_slide(image, colour_model(0.5), out=tmp_path / "file", mpp=0.5, options=SMALL)


def test_pathseg_segment_runs_the_slide_engine_for_a_slide_path(tmp_path):
    import pathseg
    from pathseg.wsi import SlideResult

    image, truth = disc_slide(300, 300, 20, seed=9)
    path = write_pyramid(tmp_path / "api.ome.tif", image, mpp=0.5, levels=2, tile=64)
    res = pathseg.segment(path, colour_model(0.5), options=SMALL.inference)
    assert isinstance(res, SlideResult) and res.folder is None
    assert same_partition(np.asarray(res.labels[:]), truth)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api.ome.tif"]


def test_failing_probability_writes_raise_instead_of_hanging():
    import threading

    from pathseg.wsi.engine import TileLog, Timings, run_inference

    class FullDisk:
        shape = (1, 640, 640)

        def __setitem__(self, key, value):
            raise OSError(errno.ENOSPC, "No space left on device")

    tiles = [(r, c) for r in range(10) for c in range(10)]
    raised: list[BaseException] = []

    def go():
        try:
            run_inference(colour_model(0.5).net, lambda x, y, w, h: np.full((h, w, 3), 235, np.uint8), FullDisk(), tiles,
                          10, {}, [0.5] * 3, [0.25] * 3, SMALL, TileLog(None), Timings())
        except BaseException as exc:  # noqa: BLE001 - checked below
            raised.append(exc)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "run_inference hung after a failed write"
    assert raised and isinstance(raised[0], OutputError) and "No space left" in str(raised[0])


def test_resume_after_the_label_array_was_deleted_recomputes_its_objects(tmp_path, monkeypatch):
    import shutil

    image, truth = disc_slide(200, 200, 20, seed=10)
    path = write_pyramid(tmp_path / "l.ome.tif", image, mpp=0.5, levels=1, tile=64)
    real = _fail_part_save(monkeypatch, 5, errno.EIO, "I/O error")
    with pytest.raises(OutputError):
        segment_slide(path, colour_model(0.5), out=tmp_path / "out", options=SMALL)
    shutil.rmtree(tmp_path / "out" / "l" / "labels.zarr")
    monkeypatch.setattr(PartStore, "save", real)
    res = segment_slide(path, colour_model(0.5), out=tmp_path / "out", options=SMALL)
    assert same_partition(np.asarray(res.labels[:]), truth) and len(res.table["id"]) == truth.max()
