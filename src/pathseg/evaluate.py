"""`pathseg evaluate`: a model's instances against a labelled dataset, image by image."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pathseg.errors import InputError
from pathseg.instances import PostProcess
from pathseg.io import check_pair, list_samples, read_image, read_label
from pathseg.metrics import evaluate_pair, format_table, summarise
from pathseg.models import LoadedModel
from pathseg.pipeline import run_info, segment_image
from pathseg.tiling import InferenceOptions


def evaluate_dataset(
    lm: LoadedModel,
    data: str | Path,
    options: InferenceOptions | None = None,
    mpp: float | None = None,
    watershed: bool = True,
    on_image: Callable[[int, int], None] | None = None,
    groups: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Per-image metrics, their mean (std) over images (and per group), and seconds per image."""
    options = options or InferenceOptions()
    samples = list_samples(data)
    pp = dataclasses.replace(PostProcess.from_dict(lm.config.postprocess), watershed=watershed)
    rows = []
    for i, s in enumerate(samples):
        image, file_mpp = read_image(s.image, mpp)
        labels = read_label(s.label)
        check_pair(image, labels, s.name)
        t0 = time.perf_counter()
        res = segment_image(image, lm, mpp=file_mpp, options=options, postprocess=pp)
        seconds = time.perf_counter() - t0
        row = {"name": s.name, **evaluate_pair(labels, res.labels), "seconds": seconds}
        row.update({k: v for k, v in res.timings.items() if k != "read_s"})  # reading is outside segment() here
        rows.append(row)
        if on_image:
            on_image(i + 1, len(samples))
    metric_rows = [{k: v for k, v in r.items() if k != "name"} for r in rows]
    group_list = None
    if groups is not None:
        missing = [r["name"] for r in rows if r["name"] not in groups]
        if missing:
            raise InputError(f"groups file has no group for image(s) {', '.join(missing[:5])}")
        group_list = [groups[r["name"]] for r in rows]
    summary = summarise(metric_rows, group_list)
    table = format_table(summary)
    info = run_info(lm, options, {"data": str(data), "postprocess": dataclasses.asdict(pp), "n_images": len(rows)})
    return {"summary": summary, "per_image": rows, "table": table, "run": info}


def read_groups(path: str | Path) -> dict[str, str]:
    """Image name -> group (e.g. patient) from a CSV with columns `name` and `group`."""
    import csv

    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise InputError(f"{path}: cannot read groups file ({e.strerror})") from None
    if not rows or not {"name", "group"} <= set(rows[0]):
        raise InputError(f"{path}: groups file needs the columns name,group")
    return {r["name"]: r["group"] for r in rows}
