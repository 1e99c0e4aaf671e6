"""Cohorts: whole slides spread over the worker processes of a Dask cluster, one task per slide.

Each slide runs in a worker exactly as :func:`pathseg.jobs.segment_one_slide` runs it in
this process (same folders, same resume), so a cohort run and a serial run are
interchangeable. Workers report tile progress as Dask events; this process relays them to
one progress callback and reports each slide as it finishes, in any order.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dask
from distributed import Client, Future, LocalCluster, WorkerPlugin, get_worker
from distributed.comm import get_address_host

from pathseg.errors import InputError
from pathseg.io.slide import slide_name
from pathseg.jobs import FileOutcome, JobReport, segment_one_slide
from pathseg.models import LoadedModel, load_model
from pathseg.tiling import pick_device

Progress = Callable[[int, int], None]  # (advance, total work units of one slide); advance 0 announces a slide

# Workers send tile progress at most this often: a slide of thousands of small tiles would
# otherwise send thousands of messages through the scheduler for no visible gain.
REPORT_INTERVAL_S = 0.25


def default_workers(device: str = "cpu") -> int:
    """Worker processes for a local cluster: 2 sharing a GPU, else one per 4 CPU cores (at least 1)."""
    # On a GPU a second process post-processes one slide while the other keeps the GPU busy.
    # On CPUs, each worker holds a model and several tiles in memory, and torch scales well
    # to ~4 threads per process: fewer, wider workers beat one per core.
    if pick_device(device).type == "cuda":
        return 2
    return max(1, dask.system.CPU_COUNT // 4)


def run_cohort(
    slides: Sequence[str | Path],
    model: LoadedModel | str | Path,
    out: str | Path,
    options: Any = None,  # pathseg.wsi.SlideOptions; None = defaults
    *,
    mpp: float | None = None,
    roi: str | None = None,
    overwrite: bool = False,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
    on_file: Callable[[FileOutcome], None] | None = None,
    client: Client | None = None,
) -> JobReport:
    """Segment whole slides in parallel on a Dask cluster into ``out/<name>/``; outcomes in input order.

    Without ``scheduler`` or ``client`` a local cluster of ``workers`` processes (default
    :func:`default_workers`) is started and closed at the end. With ``scheduler`` (the
    address of a running scheduler, e.g. one started by dask-jobqueue on SLURM) the slides,
    the model folder and ``out`` must be on a filesystem shared by every worker: the workers
    read and write them directly, and paths are sent as absolute paths. ``model`` is a
    built-in name or model folder (loaded once per worker process) or a loaded model (sent
    to every worker once; its code must be importable there). ``progress(advance, total)``
    and ``on_file(outcome)`` are called in this thread; a slide whose worker crashes or
    whose task fails in any way is recorded as failed, and the others go on.
    """
    from pathseg.wsi import SlideOptions

    options = options or SlideOptions()
    paths = [Path(p) for p in slides]
    outcomes: list[FileOutcome | None] = [None] * len(paths)
    shared_out = Path(out).resolve()
    if isinstance(model, (str, Path)) and Path(model).exists():
        model = str(Path(model).resolve())  # a folder path must mean the same on every worker
    if scheduler is not None and roi is not None and Path(roi).is_file():
        roi = str(Path(roi).resolve())

    def finish(i: int, outcome: FileOutcome) -> None:
        outcome.path = paths[i]  # as the caller gave it, not the absolute path sent to the worker
        if outcome.folder is not None:
            outcome.folder = Path(out) / outcome.folder.name
        outcomes[i] = outcome
        if on_file:
            on_file(outcome)

    # Two slides with one name would write one folder: the second fails, as in segment_files.
    seen: dict[str, Path] = {}
    todo: list[int] = []
    for i, path in enumerate(paths):
        name = slide_name(path)
        if name in seen:
            finish(i, FileOutcome(path, "failed", error=f"{path}: same name as {seen[name]}; "
                                  "their outputs would collide, rename one"))
        else:
            seen[name] = path
            todo.append(i)

    with contextlib.ExitStack() as stack:
        if todo:
            if client is None:
                client = stack.enter_context(_open_client(scheduler, workers, options.inference.device))
            _run(client, paths, todo, model, shared_out, options, mpp, roi, overwrite, progress, finish)
    report = JobReport()
    report.outcomes = [o for o in outcomes if o is not None]
    return report


@contextlib.contextmanager
def _open_client(scheduler: str | None, workers: int | None, device: str) -> Any:
    """A client of the given scheduler, or of a local cluster that lives as long as the context."""
    # Dask logs every worker start and stop at INFO, and pathseg's -v sets the root logger to
    # INFO: keep its chatter off the terminal while the cohort runs, warnings still pass.
    dask_log = logging.getLogger("distributed")
    level = dask_log.level
    dask_log.setLevel(max(logging.WARNING, level))
    try:
        with _client(scheduler, workers, device) as client:
            yield client
    finally:
        dask_log.setLevel(level)


@contextlib.contextmanager
def _client(scheduler: str | None, workers: int | None, device: str) -> Any:
    if scheduler is not None:
        try:
            client = Client(scheduler)
        except (OSError, TimeoutError) as exc:
            raise InputError(f"--scheduler {scheduler}: cannot connect ({exc})") from None
        with client:
            yield client
        return
    n = workers or default_workers(device)
    # worker-saturation 1.0: a worker gets its next slide only when it is free, so a long slide
    # never holds a short one in its queue while another worker idles. allowed-failures 1: one
    # retry for a worker lost by bad luck; a slide that kills its worker twice (a crashing reader,
    # too little memory) is recorded as failed instead of killing two more.
    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0,
                          "distributed.scheduler.allowed-failures": 1}):
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.WARNING)  # in the worker processes too
    with cluster, Client(cluster) as client:
        yield client


def _run(client: Client, paths: list[Path], todo: list[int], model: Any, out: Path, options: Any,
         mpp: float | None, roi: str | None, overwrite: bool, progress: Progress | None,
         finish: Callable[[int, FileOutcome], None]) -> None:
    """Submit one task per slide and relay events until every slide has an outcome."""
    run_id = uuid.uuid4().hex[:8]
    topic = f"pathseg-progress-{run_id}"
    events: queue.Queue = queue.Queue()
    # Progress travels as worker events (Worker.log_event -> scheduler -> Client.subscribe_topic):
    # fire-and-forget from the task thread, ordered per worker, nothing for this process to poll,
    # and part of the stable client API (distributed.Pub/Sub are gone in 2026.x and Queue is
    # "experimental" and needs a scheduler round trip per read). The handler runs on the client's
    # event loop thread, so it only queues; the callbacks run here, in the caller's thread.
    client.subscribe_topic(topic, lambda event: events.put(("tiles", event[1])))
    futures: dict[int, Future] = {}
    plugin = f"pathseg-model-{run_id}" if isinstance(model, LoadedModel) else None
    try:
        if plugin is not None:
            # A worker plugin, not client.scatter: scattered data dies with the workers holding it,
            # so a slide that crashes every worker would fail all the slides after it too; a plugin
            # is kept by the scheduler and installed again on every restarted or newly joined worker.
            try:
                client.register_plugin(_ShippedModel(plugin, model), name=plugin)
            except Exception as exc:  # noqa: BLE001 - whatever stops the model reaching the workers fails every slide
                for i in todo:
                    finish(i, _failed(paths[i], exc, "the model cannot be sent to the workers: "))
                return
        hosts = Counter(w["host"] for w in client.scheduler_info(n_workers=-1)["workers"].values())
        # Largest slides first (Dask runs higher priority first): a long slide started last
        # would leave every other worker idle at the end.
        sizes = {i: _size(paths[i]) for i in todo}
        rank = {i: r for r, i in enumerate(sorted(todo, key=lambda i: sizes[i]))}
        for i in todo:
            try:
                fut = client.submit(
                    _segment_task, i, str(paths[i].resolve()), plugin or str(model), plugin is not None, str(out),
                    options, mpp, roi, overwrite, topic if progress else None, dict(hosts),
                    key=f"pathseg-slide-{slide_name(paths[i])}-{run_id}", pure=False, priority=rank[i])
            except Exception as exc:  # noqa: BLE001 - e.g. options that cannot be pickled
                finish(i, _failed(paths[i], exc))
                continue
            futures[i] = fut
            fut.add_done_callback(lambda _f, i=i: events.put(("done", i)))
        _relay(events, futures, paths, progress, finish)
    finally:
        pending = [f for f in futures.values() if not f.done()]
        if pending:  # interrupted or failed here: stop the cluster's work on our slides
            with contextlib.suppress(Exception):
                client.cancel(pending)
        with contextlib.suppress(Exception):
            client.unsubscribe_topic(topic)
        if plugin is not None:  # also after a failed registration: the scheduler keeps the plugin anyway
            with contextlib.suppress(Exception):
                client.unregister_worker_plugin(plugin)  # frees the model in the workers


def _relay(events: queue.Queue, futures: dict[int, Future], paths: list[Path], progress: Progress | None,
           finish: Callable[[int, FileOutcome], None]) -> None:
    """Turn worker events and finished futures into progress and on_file calls until all are done."""
    totals: dict[int, int] = {}  # slide -> announced work units
    done_units: dict[int, int] = {}
    remaining = set(futures)
    while remaining:
        try:
            kind, payload = events.get(timeout=1.0)  # a timeout keeps Ctrl-C responsive
        except queue.Empty:
            continue
        if kind == "tiles":
            i, advance, total = payload
            if i not in remaining or not progress:
                continue  # late events of a finished slide
            if advance == 0:
                if i not in totals:  # a retried task announces again: count its slide once
                    totals[i], done_units[i] = total, 0
                    progress(0, total)
                continue
            # A retry after a lost worker redoes tiles already counted: never go past the total.
            step = min(advance, totals.get(i, 0) - done_units.get(i, 0))
            if step > 0:
                done_units[i] += step
                progress(step, totals[i])
            continue
        i = payload
        remaining.discard(i)
        fut = futures[i]
        try:
            outcome = fut.result()
        except Exception as exc:  # noqa: BLE001 - KilledWorker, cancelled, unpicklable results: all fail the slide
            outcome = _failed(paths[i], exc)
        # Released at once: a worker lost later would otherwise make the scheduler recompute the slide.
        fut.release()
        if progress and i in totals and totals[i] > done_units[i]:
            progress(totals[i] - done_units[i], totals[i])  # a failed slide has no work left either
            done_units[i] = totals[i]
        finish(i, outcome)


def _failed(path: Path, exc: BaseException | None, prefix: str = "") -> FileOutcome:
    """A failed outcome for a task that died outside segment_one_slide's own error handling."""
    name = type(exc).__name__
    if name == "KilledWorker":
        message = "the worker process died while segmenting it (a crash or out of memory; see the worker logs)"
    elif name == "CancelledError":
        message = "cancelled (the cluster or this client went away)"
    else:
        text = str(exc).strip().splitlines()
        message = f"{name}: {text[0] if text else ''}".rstrip(": ")
    return FileOutcome(path, "failed", error=f"{path}: {prefix}{message}")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# ---- worker side ---------------------------------------------------------------------------

_MODELS: dict[tuple[str, str], LoadedModel] = {}  # (name or folder, device) -> model, per worker process
_SHIPPED: dict[str, LoadedModel] = {}  # plugin name -> a model sent by the client
_MODELS_LOCK = threading.Lock()


class _ShippedModel(WorkerPlugin):
    """Carries a loaded model to every worker of the cluster, including those that start later."""

    def __init__(self, name: str, model: LoadedModel) -> None:
        self.name, self.model = name, model

    def setup(self, worker: Any) -> None:
        """Make the model available to this worker's tasks."""
        _SHIPPED[self.name] = self.model

    def teardown(self, worker: Any) -> None:
        """Drop it when the run is over."""
        _SHIPPED.pop(self.name, None)


def _worker_model(model: str, shipped: bool, device: str) -> LoadedModel:
    """The model, loaded once per worker process and device (slides of a cohort share it)."""
    if shipped:
        try:
            return _SHIPPED[model]
        except KeyError:
            raise RuntimeError("the model sent by the client is missing on this worker") from None
    key = (model, str(pick_device(device)))
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = load_model(model, key[1])
        return _MODELS[key]


def _set_threads(hosts: dict[str, int]) -> None:
    """Give torch this task's share of the host's cores."""
    import torch

    # Dask's nanny starts workers with OMP_NUM_THREADS=1, which would leave a lone worker on a
    # 32-core node computing on one core; torch's own default (every core, in every process)
    # would run N workers x all cores threads and thrash. So: the cores this process may use
    # (affinity / cgroup aware) divided among the worker processes of this host and their threads.
    worker = get_worker()
    sharing = hosts.get(get_address_host(worker.address), 1) * worker.state.nthreads
    torch.set_num_threads(max(1, dask.system.CPU_COUNT // max(1, sharing)))


class _Reporter:
    """Progress callback for segment_slide that forwards to the client as throttled worker events."""

    def __init__(self, topic: str, index: int) -> None:
        self.topic, self.index = topic, index
        self.total = self.pending = 0
        self.last = time.monotonic()
        self.worker = get_worker()

    def __call__(self, advance: int, total: int) -> None:
        self.total = total
        if advance == 0:
            self.flush()
            self.worker.log_event(self.topic, [self.index, 0, total])
            return
        self.pending += advance
        if time.monotonic() - self.last >= REPORT_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        """Send the progress not yet sent."""
        if self.pending:
            self.worker.log_event(self.topic, [self.index, self.pending, self.total])
            self.pending = 0
        self.last = time.monotonic()


def _segment_task(index: int, path: str, model: str, shipped: bool, out: str, options: Any, mpp: float | None,
                  roi: str | None, overwrite: bool, topic: str | None, hosts: dict[str, int]) -> FileOutcome:
    """One slide, in a worker: segment_one_slide with the worker's cached model and a progress relay."""
    _set_threads(hosts)
    lm = _worker_model(model, shipped, options.inference.device)
    reporter = _Reporter(topic, index) if topic else None
    try:
        return segment_one_slide(Path(path), lm, Path(out), options, mpp, roi, overwrite, reporter)
    finally:
        if reporter:
            reporter.flush()

