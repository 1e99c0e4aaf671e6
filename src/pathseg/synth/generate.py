"""Generate synthetic histology samples from a scene: noisy u0, clean g_u, task mask g_m, instances."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from pathseg._version import __version__
from pathseg.errors import InputError, OutputError
from pathseg.io.write import atomic_open, write_json, write_label_map, write_table_csv
from pathseg.synth._render import (
    _FLAT,
    Context,
    paint_layer,
    region_mask,
    render_geometry,
)
from pathseg.synth.colour import (
    std_normal,  # table-lookup normal: ~4x faster than rng.standard_normal
)
from pathseg.synth.colour import noise as colour_noise
from pathseg.synth.rules import COVER_ALPHA, LayerState, apply_rules, object_slices
from pathseg.synth.script import parse_scene
from pathseg.synth.spec import Scene

__all__ = ["GENERATOR_VERSION", "SynthSample", "generate", "generate_batch", "list_scenes", "load_scene",
           "write_dataset"]

# Bump when the same (scene, seed) would give different pixels: write_dataset refuses to mix versions.
GENERATOR_VERSION = 1
SCENES_DIR = Path(__file__).with_name("scenes")
_FOLDERS = ("images", "clean", "masks", "labels", "objects")


@dataclass
class SynthSample:
    """One generated sample with its exact ground truth."""
    u0: np.ndarray        # (H, W, 3) float32 noisy input
    g_u: np.ndarray       # (H, W, 3) float32 clean image
    g_m: np.ndarray       # (H, W) float32 {0, 1} task mask
    instances: np.ndarray  # (H, W) int32 visible top-most object id, 0 = none
    table: list[dict]     # one row per object

    def save(self, folder: Path, name: str) -> None:
        """Write <name>.png (u0), <name>_clean.png, <name>_mask.png, <name>_labels.png, <name>_objects.csv."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        _write_sample(self, {k: folder / f"{name}{suffix}" for k, suffix in (
            ("images", ".png"), ("clean", "_clean.png"), ("masks", "_mask.png"), ("labels", "_labels.png"),
            ("objects", "_objects.csv"))})


def list_scenes() -> list[str]:
    """Names of the built-in scenes."""
    return sorted(p.stem for p in SCENES_DIR.glob("*.yaml"))


def load_scene(source: str | Path) -> Scene:
    """A built-in scene by name, or a scene script by path."""
    path = Path(source)
    if isinstance(source, str) and (SCENES_DIR / f"{source}.yaml").is_file() and not path.suffix:
        path = SCENES_DIR / f"{source}.yaml"
    elif not path.is_file():
        raise InputError(f"{source}: no such scene file nor built-in scene (built-in: {', '.join(list_scenes())})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read scene script ({exc})") from None
    return parse_scene(text, path=path)


def generate(scene: Scene, seed: int, size: tuple[int, int] | None = None) -> SynthSample:
    """Generate one sample; the same (scene, seed, size) gives identical arrays."""
    shape = tuple(int(v) for v in (size or scene.size))
    if len(shape) != 2 or min(shape) < 8:
        raise InputError(f"{scene.name}: size {size} too small (need at least 8 x 8 px)")
    rng = np.random.default_rng(seed)
    ctx = Context(shape, rng, count_scale=shape[0] * shape[1] / (scene.size[0] * scene.size[1]))
    for name, spec in scene.regions.items():
        ctx.regions[name] = region_mask(spec, shape, rng)
    rgbs = {}
    for i in scene.generation_order():  # parents before children, whatever their stacking order
        spec = scene.layers[i]
        ctx.states[spec.name], rgbs[spec.name] = render_geometry(spec, ctx)
    states = [ctx.states[spec.name] for spec in scene.layers]
    comp = np.zeros((*shape, 3), np.float32)
    flat = comp.reshape(-1, 3)
    owner = np.full(shape, -1, np.int32)
    for i, (spec, state) in enumerate(zip(scene.layers, states)):
        idx, rgb = paint_layer(spec, state, rgbs[spec.name], ctx)
        # "Over" compositing bottom to top: top layers replace what they cover, alpha-weighted.
        if idx is not None and spec.visibility >= 1.0 and spec.blur == 0:
            flat[idx] = rgb  # opaque: plain replacement, no need to read what lies below
        elif idx is not None:
            a = state.alpha.ravel()[idx][:, None]
            below = flat[idx]
            flat[idx] = below + a * (rgb - below)
        elif state.alpha.min() >= 1.0:
            flat[...] = rgb.reshape(-1, 3)
        else:
            comp += state.alpha[..., None] * (rgb - comp)
        owner[state.alpha >= COVER_ALPHA] = i
    g_u = np.clip(comp, 0.0, 1.0)
    u0 = g_u + colour_noise(owner, [s.colour.stats if s.colour else _FLAT for s in scene.layers], rng)
    acq = scene.acquisition
    if acq.blur > 0:
        # truncate 2: for the usual blur (< 1 px) the dropped tails weigh < 1 %, and it halves the cost.
        u0 = ndimage.gaussian_filter(u0, (acq.blur, acq.blur, 0), truncate=2.0)
    if acq.noise > 0:
        u0 += np.float32(acq.noise) * std_normal(u0.shape, rng)
    np.clip(u0, 0.0, 1.0, out=u0)
    mask, selected = apply_rules(scene.mask, states, shape)
    instances = _instances(states, shape)
    return SynthSample(u0=u0.astype(np.float32, copy=False), g_u=g_u, g_m=mask.astype(np.float32),
                       instances=instances, table=_table(states, instances, selected, shape, ctx.next_id))


def _instances(states: Sequence[LayerState], shape: tuple[int, int]) -> np.ndarray:
    """Top-most object id per pixel; a covering fill or ribbon layer hides the objects below."""
    out = np.zeros(shape, np.int32)
    for state in states:
        cover = state.alpha >= COVER_ALPHA
        np.copyto(out, 0 if state.labels is None else state.labels, where=cover)
    return out


def _table(states: Sequence[LayerState], instances: np.ndarray, selected: set[int],
           shape: tuple[int, int], n_ids: int) -> list[dict]:
    visible = np.bincount(instances.ravel(), minlength=n_ids)
    rows = []
    for state in states:
        for rec in state.objects:
            h, w = rec.mask.shape
            inside = rec.top >= 0 and rec.left >= 0 and rec.top + h <= shape[0] and rec.left + w <= shape[1]
            full = rec.mask if inside else rec.mask[object_slices(shape, rec)[1]]
            cy, cx = rec.centroid()
            rows.append({"id": rec.id, "layer": state.name, "category": state.category, "parent": rec.parent,
                         "centroid_y": round(cy, 2), "centroid_x": round(cx, 2), "area_px": int(visible[rec.id]),
                         "area_full_px": int(np.count_nonzero(full)), "in_mask": rec.id in selected})
    rows.sort(key=lambda r: r["id"])
    return rows


def generate_batch(scene: Scene, seeds: Sequence[int], size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Stacked training arrays: u0 (N,3,H,W), g_u (N,3,H,W), g_m (N,1,H,W), float32."""
    samples = [generate(scene, int(s), size) for s in seeds]
    return {"u0": np.stack([s.u0.transpose(2, 0, 1) for s in samples]),
            "g_u": np.stack([s.g_u.transpose(2, 0, 1) for s in samples]),
            "g_m": np.stack([s.g_m[None] for s in samples])}


def _png(path: Path, image: np.ndarray) -> None:
    with atomic_open(path) as fh:
        Image.fromarray(image).save(fh, format="PNG")


def _rgb8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def _write_sample(sample: SynthSample, paths: dict[str, Path]) -> None:
    # The u0 image is written last: write_dataset treats its presence as "sample complete".
    _png(paths["clean"], _rgb8(sample.g_u))
    _png(paths["masks"], (sample.g_m > 0.5).astype(np.uint8) * 255)
    write_label_map(paths["labels"], sample.instances)
    write_table_csv(paths["objects"], sample.table)
    _png(paths["images"], _rgb8(sample.u0))


def _config(scene: Scene, seed: int, size: tuple[int, int]) -> dict:
    return {"scene": scene.name, "scene_sha256": hashlib.sha256(scene.text.encode("utf-8")).hexdigest(),
            "seed": int(seed), "size": list(size), "generator_version": GENERATOR_VERSION,
            # The colour file changes the images as much as the script does: resume only if unchanged.
            "colours_sha256": hashlib.sha256(Path(scene.colours).read_bytes()).hexdigest() if scene.colours else None}


def write_dataset(scene: Scene, out: Path, n: int, seed: int, size: tuple[int, int] | None = None,
                  overwrite: bool = False, progress: Callable[[int], None] | None = None) -> Path:
    """Write n samples (image i from seed + i) as a pathseg dataset folder; resumes; progress(done) per image."""
    out = Path(out)
    size = tuple(int(v) for v in (size or scene.size))
    config = _config(scene, seed, size)
    meta_path = out / "synth.json"
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    if meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        same = isinstance(old, dict) and all(old.get(k) == v for k, v in config.items())
        if not same:
            if not overwrite:
                raise OutputError(f"{out}: holds a synthetic dataset made with other settings (synth.json); "
                                  "choose a new folder or pass --overwrite")
            _remove_samples(out, scene.name)
            if isinstance(old, dict) and isinstance(old.get("scene"), str) and old["scene"] != scene.name:
                _remove_samples(out, old["scene"])  # else the old scene's images would stay mixed in
    elif out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()) and not overwrite:
        raise OutputError(f"{out}: output folder is not empty; choose a new folder or pass --overwrite")
    try:
        for sub in _FOLDERS:
            (out / sub).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out}: cannot create output folder ({exc.strerror or exc})") from exc
    with atomic_open(out / "scene.yaml") as fh:
        fh.write(scene.text.encode("utf-8"))
    write_json(meta_path, {**config, "n": int(n), "first_seed": int(seed), "seed_rule": "image i uses seed + i",
                           "mpp": scene.mpp, "pathseg_version": __version__, "numpy_version": np.__version__})
    for i in range(n):
        name = f"{scene.name}_{i:05d}"
        paths = {sub: out / sub / f"{name}{'.csv' if sub == 'objects' else '.png'}" for sub in _FOLDERS}
        if overwrite or not all(p.is_file() for p in paths.values()):
            _write_sample(generate(scene, seed + i, size), paths)
        if progress is not None:
            progress(i + 1)
    return out


def _remove_samples(out: Path, scene_name: str) -> None:
    """Delete the files a previous write_dataset of this scene made (before regenerating)."""
    pattern = re.compile(rf"^{re.escape(scene_name)}_\d{{5}}\.(png|csv)$")
    for sub in _FOLDERS:
        folder = out / sub
        if folder.is_dir():
            for p in folder.iterdir():
                if pattern.match(p.name):
                    p.unlink()
