"""Streaming network inference over a slide: tiles read ahead in threads, probabilities written to zarr.

A slide is cut into square tiles of ``tile`` px in the working frame (the model's pixel
size). Each tile is read with ``halo`` px of real context on every side, the network runs
over it in fixed-size windows whose kept centres tile the core exactly, and the core's
class probabilities go to a zarr array whose chunks are the tiles: one tile is one chunk
write, and zarr's local store writes a chunk to a temporary name and renames it, so a
``kill -9`` can never leave half a tile behind. A tile counts as done once its index is
appended to a log (fsynced); a restarted run skips those tiles.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pathseg.errors import OutputError
from pathseg.tiling import InferenceOptions, autocast_context
from pathseg.tiling.windows import network_outputs

log = logging.getLogger(__name__)

# Probabilities are stored as uint8 (1/255 steps): 4x smaller than float32 on disk and in
# the block reads of post-processing; the instance thresholds (0.4-0.6) are unaffected.
PROB_SCALE = 255.0
EMBED_RANGE = 8.0  # embeddings stored in [-8, 8] (the discriminative loss keeps cluster centres near 0)


@dataclass(frozen=True)
class SlideOptions:
    """How a slide is tiled, read, inferred and post-processed."""

    # One 1024-px window per call: per output pixel ~1.3x faster on CPU than four 512-px
    # windows (less overlap recomputed) at ~0.8 GB peak (benchmarks/bench_slide.py).
    inference: InferenceOptions = field(default_factory=lambda: InferenceOptions(window=1024, halo=64, batch_size=1))
    tile: int = 2048  # target tile core in working px; rounded down to a multiple of the window core
    margin: int = 128  # context around each block for instance extraction: the largest object radius (working px)
    readers: int = 2  # threads reading and decoding tiles ahead of the network
    prefetch: int = 3  # tiles read ahead per reader
    tissue: bool = True  # only tiles over detected tissue (False: every tile of the slide / ROI)
    thumbnail: int = 2048  # longer side of the thumbnail used for tissue detection and the overlay
    keep_probs: bool = False  # keep the class-probability zarr after the run (large)

    def __post_init__(self) -> None:
        core = self.inference.window - 2 * self.inference.halo
        if self.tile < core:
            raise ValueError(f"--tile {self.tile}: must be at least the window core ({core} px)")
        if self.margin < 0 or self.readers < 1 or self.prefetch < 1:
            raise ValueError("--margin must be >= 0, --readers and prefetch >= 1")

    @property
    def tile_core(self) -> int:
        """Tile core in working px: a whole number of window cores, so windows tile it with no overlap."""
        core = self.inference.window - 2 * self.inference.halo
        return max(1, self.tile // core) * core


@dataclass
class Timings:
    """Seconds spent per stage; reads run in threads, so ``read_s`` can overlap ``infer_s``."""

    read_s: float = 0.0  # summed over reader threads
    read_wait_s: float = 0.0  # the network waiting for a tile
    infer_s: float = 0.0
    post_s: float = 0.0  # instances, measurements and outlines, block by block
    write_s: float = 0.0
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        """Rounded values for run.json."""
        return {k: round(v, 3) for k, v in self.__dict__.items()}


class TileLog:
    """Append-only record of finished tiles; survives kill -9 (a torn last line is ignored)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.done: set[int] = set()
        if path is not None and path.exists():
            for line in path.read_text().splitlines():
                if line.strip().isdigit():
                    self.done.add(int(line))
        self._fh = None

    def add(self, indices: Iterable[int]) -> None:
        """Mark tiles as finished (durably, when backed by a file)."""
        indices = list(indices)
        self.done.update(indices)
        if self.path is None:
            return
        if self._fh is None:
            self._fh = open(self.path, "a")
        # A torn line from an earlier kill would merge with ours: start on a fresh line.
        self._fh.write("\n" + "\n".join(map(str, indices)) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Close the file handle."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def fault_point(kind: str, count: int) -> None:
    """Test hook: with PATHSEG_FAULT=kind:N the process kills itself (SIGKILL) once N items are done."""
    # A real kill -9 at a chosen point, so tests can check what a restart does with the
    # files left behind; the variable is never set outside tests.
    if os.environ.get("PATHSEG_FAULT") == f"{kind}:{count}":
        os.kill(os.getpid(), signal.SIGKILL)


def tile_windows(tile: int, window: int, halo: int) -> list[tuple[int, int]]:
    """(y, x) offsets, in a tile read with ``halo`` px of context, of windows whose centres tile the core."""
    core = window - 2 * halo
    starts = list(range(0, tile, core))
    return [(y, x) for y in starts for x in starts]


@torch.inference_mode()
def infer_tile(net: nn.Module, rgb: np.ndarray, mean: list[float], std: list[float], tile: int,
               opts: InferenceOptions, n_classes: int, windows: np.ndarray | None = None) -> np.ndarray:
    """Class probabilities (C, tile, tile) of a tile core from its RGB read with ``opts.halo`` px context.

    ``windows`` (k x k bool, k = tile / window core) selects the windows to compute; the
    cores of the others (glass, or beyond the slide's edge) are left at probability 0.
    """
    dev = next(net.parameters()).device
    win, halo = opts.window, opts.halo
    core = win - 2 * halo
    m = torch.tensor(mean, dtype=torch.float32, device=dev).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32, device=dev).view(1, 3, 1, 1) * 255.0
    starts = tile_windows(tile, win, halo)
    if windows is not None:
        starts = [(y, x) for y, x in starts if windows[y // core, x // core]]
    out = np.zeros((n_classes, tile, tile), np.float32)
    for i in range(0, len(starts), opts.batch_size):
        batch = starts[i : i + opts.batch_size]
        crops = np.stack([rgb[y : y + win, x : x + win] for y, x in batch])
        if len(batch) < opts.batch_size:  # one shape for every call (cuDNN / torch.compile)
            crops = np.concatenate([crops, np.repeat(crops[-1:], opts.batch_size - len(batch), 0)])
        x = torch.from_numpy(crops).to(dev, non_blocking=True).permute(0, 3, 1, 2).float()
        x = ((x - m) / s).contiguous(memory_format=torch.channels_last)
        with autocast_context(dev, opts.precision):
            prob = network_outputs(net, x, opts.tta)
        probs = prob[: len(batch), :, halo : halo + core, halo : halo + core].cpu().numpy()
        for p, (y, x0) in zip(probs, batch):
            out[:, y : y + core, x0 : x0 + core] = p
    return out


def quantise(probs: np.ndarray, embed_dim: int = 0) -> np.ndarray:
    """uint8 storage form of classes 1..C-1 (class 0 is what remains, so absent tiles read as background).

    The last ``embed_dim`` channels of an instance-embedding model are stored on a fixed scale
    (EMBED_RANGE): their 1/16-unit steps are far below the clustering bandwidth (~1).
    """
    if embed_dim:
        cls = quantise(probs[:-embed_dim])
        emb = np.clip((probs[-embed_dim:] + EMBED_RANGE) * (PROB_SCALE / (2 * EMBED_RANGE)) + 0.5, 0, 255).astype(np.uint8)
        return np.concatenate([cls, emb])
    return np.clip(probs[1:] * PROB_SCALE + 0.5, 0, 255).astype(np.uint8)


def dequantise(stored: np.ndarray, embed_dim: int = 0) -> np.ndarray:
    """Class probabilities (C, H, W) float32 (then any embedding channels) from the stored uint8 form."""
    if embed_dim:
        emb = stored[-embed_dim:].astype(np.float32) * (2 * EMBED_RANGE / PROB_SCALE) - EMBED_RANGE
        return np.concatenate([dequantise(stored[:-embed_dim]), emb])
    rest = stored.astype(np.float32) / PROB_SCALE
    background = np.clip(1.0 - rest.sum(0, keepdims=True), 0.0, 1.0)
    return np.concatenate([background, rest])


ReadFn = Callable[[int, int, int, int], np.ndarray]  # (x, y, width, height) in the working frame -> RGB


def run_inference(
    net: nn.Module,
    read: ReadFn,
    probs: Any,  # zarr array (C-1, H, W) uint8, chunks (C-1, tile, tile)
    tiles: list[tuple[int, int]],  # (row, col) of the tiles to compute, in order
    grid_cols: int,
    windows: dict[tuple[int, int], np.ndarray],  # per tile: which windows to compute (see infer_tile)
    mean: list[float],
    std: list[float],
    options: SlideOptions,
    done: TileLog,
    timings: Timings,
    on_tile: Callable[[int], None] | None = None,
) -> None:
    """Compute every tile not yet in ``done`` and write its probabilities; reads and writes overlap the network."""
    t = options.tile_core
    halo = options.inference.halo
    todo = [(r, c) for r, c in tiles if r * grid_cols + c not in done.done]
    if len(todo) < len(tiles) and on_tile:
        on_tile(len(tiles) - len(todo))
    if not todo:
        return
    lock = threading.Lock()
    embed = int(getattr(net, "embed_dim", 0) or 0)

    def read_tile(rc: tuple[int, int]) -> np.ndarray:
        t0 = time.perf_counter()
        rgb = read(rc[1] * t - halo, rc[0] * t - halo, t + 2 * halo, t + 2 * halo)
        with lock:
            timings.read_s += time.perf_counter() - t0
        return rgb

    # The writer thread compresses and stores tiles while the network computes the next one.
    pending: queue.Queue = queue.Queue(maxsize=2)
    failure: list[BaseException] = []
    written = [0]

    def writer() -> None:
        while True:
            item = pending.get()
            if item is None:
                return
            if failure:  # keep draining so the network thread never blocks on a full queue
                continue
            (r, c), data = item
            try:
                t0 = time.perf_counter()
                h, w = probs.shape[1:]
                y, x = r * t, c * t
                probs[:, y : min(y + t, h), x : min(x + t, w)] = data[:, : min(t, h - y), : min(t, w - x)]
                done.add([r * grid_cols + c])
                timings.write_s += time.perf_counter() - t0
                written[0] += 1
                fault_point("tile", written[0])
            except BaseException as exc:  # surfaced in the main thread
                failure.append(exc)

    wthread = threading.Thread(target=writer, name="pathseg-tile-writer", daemon=True)
    wthread.start()
    depth = options.readers * options.prefetch
    pool = ThreadPoolExecutor(options.readers, thread_name_prefix="pathseg-reader")
    # The pool is shut down in `finally`, cancelling reads not yet started (Ctrl-C, errors).
    try:
        futures = [pool.submit(read_tile, rc) for rc in todo[:depth]]
        for k, rc in enumerate(todo):
            t0 = time.perf_counter()
            rgb = futures[k].result()
            if k + depth < len(todo):
                futures.append(pool.submit(read_tile, todo[k + depth]))
            futures[k] = None  # type: ignore[call-overload]  # free the tile once consumed
            t1 = time.perf_counter()
            out = quantise(infer_tile(net, rgb, mean, std, t, options.inference, probs.shape[0] + 1, windows.get(rc)), embed)
            t2 = time.perf_counter()
            timings.read_wait_s += t1 - t0
            timings.infer_s += t2 - t1
            if failure:
                break
            pending.put((rc, out))
            if on_tile:
                on_tile(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        pending.put(None)
        wthread.join()
        done.close()
    if failure:
        exc = failure[0]
        if isinstance(exc, OSError):
            raise OutputError(f"{_store_path(probs)}: cannot write ({exc.strerror or exc})") from exc
        raise exc


def _store_path(array: Any) -> str:
    root = getattr(getattr(array, "store", None), "root", None)
    return str(root) if root is not None else "probabilities"
