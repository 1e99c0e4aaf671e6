"""Colour models of the synthetic generator: fitted mean/texture/noise statistics, painting, colour files.

A category (nucleus, stroma, glass, ...) is painted as ``mean (or one cohort mean) + texture``, the
texture a smooth Gaussian random field coloured by ``texture_cov``; pixel noise coloured by
``noise_cov`` goes only into the noisy input u0. Fitting (and Reinhard) lives in
:mod:`pathseg.synth.colour_fit`; its public names are importable from here too.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy.special import ndtri

from pathseg.errors import InputError
from pathseg.io.write import atomic_open
from pathseg.synth.fields import gaussian_field

COLOURS_DIR = Path(__file__).with_name("colours")
FORMAT_VERSION = 1

# Names implemented in colour_fit (imported lazily: fitting needs scikit-learn/-image, generating does not).
_FIT_NAMES = ("fit_colours", "fit_colours_cli", "lab_stats", "load_texture_bank", "reinhard", "save_texture_bank",
              "texture_bank")
__all__ = ["ColourStats", "builtin_colours", "cholesky_psd", "lattice_texture", "load_colour_file", "load_colours",
           "noise", "paint", "save_colours", "texture_fields"]


def __getattr__(name: str) -> Any:
    """Lazily re-export the fitting functions of :mod:`pathseg.synth.colour_fit`."""
    if name in _FIT_NAMES:
        from pathseg.synth import colour_fit

        return getattr(colour_fit, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class ColourStats:
    """Colour statistics of one category: mean, texture and pixel-noise covariances, cohorts."""

    mean: np.ndarray
    noise_cov: np.ndarray
    texture_cov: np.ndarray
    texture_sigma: float = 2.0
    cohorts: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, np.float64).reshape(3)
        self.noise_cov = np.asarray(self.noise_cov, np.float64).reshape(3, 3)
        self.texture_cov = np.asarray(self.texture_cov, np.float64).reshape(3, 3)
        self.texture_sigma = float(self.texture_sigma)
        if self.cohorts is not None:
            self.cohorts = np.asarray(self.cohorts, np.float64).reshape(-1, 3)

    def to_dict(self) -> dict:
        """Plain JSON-able dict (the inverse of :meth:`from_dict`)."""
        d: dict[str, Any] = {"mean": self.mean.tolist(), "noise_cov": self.noise_cov.tolist(),
                             "texture_cov": self.texture_cov.tolist(), "texture_sigma": self.texture_sigma}
        return d if self.cohorts is None else {**d, "cohorts": self.cohorts.tolist()}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> ColourStats:
        """Validated stats from a dict; InputError "<where>.<key>: ..." on any bad value.

        ``mean`` is required; missing ``noise_cov`` / ``texture_cov`` mean zero (flat colour).
        """
        if not isinstance(d, dict):
            raise InputError(f"{where}: expected a mapping with a 'mean', got {type(d).__name__}")
        unknown = sorted(set(d) - {"mean", "noise_cov", "texture_cov", "texture_sigma", "cohorts"})
        if unknown:
            raise InputError(f"{_key(where, unknown[0])}: unknown key (expected mean, noise_cov, "
                             "texture_cov, texture_sigma, cohorts)")
        if "mean" not in d:
            raise InputError(f"{_key(where, 'mean')}: missing")
        mean = _matrix(d["mean"], (3,), _key(where, "mean"))
        _in_unit_range(mean, _key(where, "mean"))
        covs = [_cov(d.get(k, np.zeros((3, 3))), _key(where, k)) for k in ("noise_cov", "texture_cov")]
        sigma = d.get("texture_sigma", 2.0)
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < sigma <= 1000:
            raise InputError(f"{_key(where, 'texture_sigma')}: expected a number in (0, 1000], got {sigma!r}")
        cohorts = None
        if d.get("cohorts") is not None:
            cohorts = _matrix(d["cohorts"], (-1, 3), _key(where, "cohorts"))
            if len(cohorts) == 0:
                raise InputError(f"{_key(where, 'cohorts')}: expected at least one colour (or leave it out)")
            _in_unit_range(cohorts, _key(where, "cohorts"))
        return cls(mean, covs[0], covs[1], float(sigma), cohorts)


def _key(where: str, key: str) -> str:
    # "he.json" -> "he.json: mean"; "he.json: categories.nucleus" -> "he.json: categories.nucleus.mean"
    if not where:
        return key
    return f"{where}.{key}" if ": " in where and not where.endswith(":") else f"{where.rstrip(':')}: {key}"


def _matrix(value: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    want = "x".join("k" if s < 0 else str(s) for s in shape)
    kind = "a list of 3 numbers" if shape == (3,) else f"a {want} matrix"
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{where}: expected {kind}" + ("" if shape == (3,) else " of numbers")) from None
    if not (arr.ndim == len(shape) and all(s < 0 or a == s for a, s in zip(arr.shape, shape))):
        got = "x".join(map(str, arr.shape)) if arr.ndim else "a single number"
        raise InputError(f"{where}: expected {kind}, got {got}")
    if not np.isfinite(arr).all():
        raise InputError(f"{where}: values must be finite numbers")
    return arr


def _in_unit_range(arr: np.ndarray, where: str) -> None:
    if arr.min() < 0 or arr.max() > 1:
        raise InputError(f"{where}: values must lie in [0, 1] (RGB as fractions of 255)")


def _cov(value: Any, where: str) -> np.ndarray:
    cov = _matrix(value, (3, 3), where)
    scale = max(float(np.abs(cov).max()), 1e-12)
    if np.abs(cov - cov.T).max() > 1e-6 * scale:
        raise InputError(f"{where}: not symmetric")
    if np.linalg.eigvalsh(cov).min() < -1e-7 * scale:
        raise InputError(f"{where}: not positive semi-definite")
    if np.diag(cov).max() > 1:  # colours live in [0, 1]: a larger variance is a unit mistake (0-255?)
        raise InputError(f"{where}: variances must be <= 1 (RGB as fractions of 255)")
    return (cov + cov.T) / 2


def _check_reference(ref: Any, where: str) -> dict:
    if not isinstance(ref, dict):
        raise InputError(f"{where}: expected a mapping with 'mean' and 'std' (CIELAB)")
    for key in ("mean", "std"):
        if key not in ref:
            raise InputError(f"{where}.{key}: missing")
        arr = _matrix(ref[key], (3,), f"{where}.{key}")
        if key == "std" and arr.min() <= 0:
            raise InputError(f"{where}.std: values must be positive")
    return {"mean": [float(v) for v in ref["mean"]], "std": [float(v) for v in ref["std"]]}


def load_colour_file(path: str | Path) -> tuple[dict[str, ColourStats], dict | None, dict]:
    """Read a colour JSON: (categories, Reinhard reference or None, meta); InputError names file/key."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: colour file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read colour file ({exc})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("categories"), dict):
        raise InputError(f"{path}: categories: missing (expected {{\"version\": 1, \"categories\": {{...}}}})")
    if doc.get("version") != FORMAT_VERSION:
        raise InputError(f"{path}: version: expected {FORMAT_VERSION}, got {doc.get('version')!r}")
    unknown = sorted(set(doc) - {"version", "categories", "reference", "meta"})
    if unknown:
        raise InputError(f"{path}: {unknown[0]}: unknown key (expected version, categories, reference, meta)")
    if not doc["categories"]:
        raise InputError(f"{path}: categories: empty")
    cats = {str(k): ColourStats.from_dict(v, f"{path}: categories.{k}") for k, v in doc["categories"].items()}
    ref = None if doc.get("reference") is None else _check_reference(doc["reference"], f"{path}: reference")
    if not isinstance(meta := doc.get("meta") or {}, dict):
        raise InputError(f"{path}: meta: expected a mapping")
    return cats, ref, meta


def load_colours(path: str | Path) -> dict[str, ColourStats]:
    """Categories of a colour JSON ({"version": 1, "categories": {...}, "reference": {...}})."""
    return load_colour_file(path)[0]


def save_colours(path: str | Path, cats: dict[str, ColourStats], reference: dict | None = None,
                 meta: dict | None = None) -> None:
    """Write categories (+ Reinhard reference, meta) as a colour JSON, atomically."""
    doc: dict[str, Any] = {"version": FORMAT_VERSION, "categories": {k: v.to_dict() for k, v in cats.items()}}
    if reference is not None:
        doc["reference"] = _check_reference(reference, "reference")
    if meta:
        doc["meta"] = meta
    # 8 significant digits: far below any colour difference, and the file stays readable.
    doc = json.loads(json.dumps(doc), parse_float=lambda v: float(f"{float(v):.8g}"))
    text = json.dumps(doc, indent=1)
    # One line per vector / matrix row instead of one line per number.
    text = re.sub(r"\[\s+([^\[\]{}\"]*?)\s+\]", lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)
    with atomic_open(path) as fh:
        fh.write((text + "\n").encode("utf-8"))


def builtin_colours(name: str) -> Path:
    """Path of a built-in colour file (src/pathseg/synth/colours/<name>.json)."""
    path = COLOURS_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in COLOURS_DIR.glob("*.json"))
        raise InputError(f"{name}: no built-in colour file of that name (known: {', '.join(known) or 'none'})")
    return path


# --------------------------------------------------------------------------- linear algebra
def cholesky_psd(cov: np.ndarray) -> np.ndarray:
    """Lower-triangular L with L @ L.T ~= cov, robust to semi-definite/slightly indefinite input."""
    cov = np.asarray(cov, np.float64)
    return _cholesky_cached(cov.tobytes(), cov.shape[0]).copy()


@lru_cache(maxsize=256)
def _cholesky_cached(raw: bytes, n: int) -> np.ndarray:
    # Cached: noise() asks for the same few factors for every generated image.
    cov = np.frombuffer(raw, np.float64).reshape(n, n)
    cov = (cov + cov.T) / 2
    w, v = np.linalg.eigh(cov)
    psd = (v * np.clip(w, 0, None)) @ v.T  # eigen-clip: nearest PSD matrix
    tol = 1e-12 * max(float(np.trace(psd)), 1e-300)
    lo = np.zeros((n, n))
    # Semi-definite Cholesky: a (numerically) zero pivot gets a zero column instead of failing.
    for j in range(n):
        d = psd[j, j] - lo[j, :j] @ lo[j, :j]
        if d <= tol:
            continue
        lo[j, j] = math.sqrt(d)
        lo[j + 1:, j] = (psd[j + 1:, j] - lo[j + 1:, :j] @ lo[j, :j]) / lo[j, j]
    return lo


# --------------------------------------------------------------------------- random fields
def _normal_table() -> np.ndarray:
    # 65536-level inverse normal CDF: 16 random bits -> one N(0, 1) sample. rng.standard_normal costs
    # ~10 ns/sample here, this table lookup ~2.5 ns, which is what keeps noise() within budget.
    table = ndtri((np.arange(65536) + 0.5) / 65536)
    return (table / table.std()).astype(np.float32)


_NORMAL = _normal_table()


def std_normal(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """float32 standard normal samples (quantised to 65536 levels, tails at +-4.2) from rng."""
    n = int(np.prod(shape))
    bits = np.frombuffer(rng.bytes(2 * n), "<u2")  # explicit endianness: same output on every machine
    return np.take(_NORMAL, bits).reshape(shape)


def _factor(sigma: float) -> int:
    # Texture fields are smooth: draw them at 1/f resolution (sigma/f >= 1 px stays well sampled).
    return 1 if sigma < 2 else int(min(8, 2 ** math.floor(math.log2(sigma))))


def _low_fields(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Three Gaussian fields (3, h, w) at 1/f resolution, scaled so they have unit std once upsampled; f."""
    f = _factor(sigma)
    h, w = -(-int(shape[0]) // f), -(-int(shape[1]) // f)
    return np.stack([gaussian_field((h, w), sigma / f, rng) for _ in range(3)]) / _bilinear_std(sigma / f, f), f


@lru_cache(maxsize=64)
def _bilinear_std(s: float, f: int) -> np.float32:
    # Bilinear interpolation between samples of correlation rho = exp(-1 / (4 s^2)) (Gaussian-filtered
    # noise) has variance (1-t)^2 + t^2 + 2 t (1-t) rho per axis at fraction t: ~0.92 std for s=1, f=2.
    t = ((np.arange(f) + 0.5) / f - 0.5) % 1.0
    var = ((1 - t) ** 2 + t**2 + 2 * t * (1 - t) * math.exp(-1 / (4 * s * s))).mean()
    return np.float32(var)  # separable: 2-D variance = var^2, so the std is var


def _upsample_hwc(low: np.ndarray, f: int, shape: tuple[int, int], offset: np.ndarray | None = None) -> np.ndarray:
    """Bilinear upsampling of (3, h, w) by integer f to (H, W, 3) float32, plus a per-channel offset."""
    out = np.empty((int(shape[0]), int(shape[1]), 3), np.float32)
    for i in range(3):
        chan = low[i]
        if f > 1:  # Pillow's float resize: ~10x faster than scipy.ndimage.zoom
            im = Image.fromarray(np.ascontiguousarray(chan, np.float32), mode="F")
            chan = np.asarray(im.resize((low.shape[2] * f, low.shape[1] * f), Image.BILINEAR))
        # Per channel: a broadcast `out += (3,) offset` runs a 3-long inner loop and costs ~0.6 ms.
        np.add(chan[: shape[0], : shape[1]], 0 if offset is None else offset[i], out=out[..., i])
    return out


def texture_fields(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float32 unit Gaussian fields of correlation length ~sigma px (for paint(texture=...))."""
    low, f = _low_fields(shape, sigma, rng)
    return _upsample_hwc(low, f, shape)


# --------------------------------------------------------------------------- painting
def paint(shape: tuple[int, int], stats: ColourStats, rng: np.random.Generator, cohort: int | None = None,
          texture: np.ndarray | None = None) -> np.ndarray:
    """Clean colour canvas (H, W, 3) float32 in [0, 1]: (cohort) mean + texture coloured by texture_cov."""
    h, w = int(shape[0]), int(shape[1])
    if cohort is None:
        base = stats.mean
    else:
        n = 0 if stats.cohorts is None else len(stats.cohorts)
        if not 0 <= cohort < n:
            raise ValueError(f"cohort {cohort} out of range: these stats have {n} cohort(s)")
        base = stats.cohorts[cohort]
    lo = cholesky_psd(stats.texture_cov).astype(np.float32)
    if texture is not None:
        if texture.shape != (h, w, 3):
            raise ValueError(f"texture must have shape {(h, w, 3)}, got {texture.shape}")
        out = _upsample_hwc(np.tensordot(lo, np.moveaxis(np.asarray(texture, np.float32), -1, 0), axes=1), 1,
                            (h, w), base)
    elif lo.any():
        low, f = _low_fields((h, w), stats.texture_sigma, rng)
        # Mixing is linear, so it commutes with upsampling: mix the small fields (f^2 fewer pixels).
        out = _upsample_hwc(np.tensordot(lo, low, axes=1), f, (h, w), base)
    else:
        out = np.empty((h, w, 3), np.float32)
        for i in range(3):
            out[..., i] = base[i]
    return np.clip(out, 0.0, 1.0, out=out)


def noise(owner: np.ndarray, stats: list[ColourStats], rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float32 pixel noise, coloured per pixel by the noise_cov of its owner (-1 = none)."""
    owner = np.asarray(owner)
    if owner.ndim != 2 or not np.issubdtype(owner.dtype, np.integer):
        raise ValueError(f"owner must be a 2-D integer array, got {owner.dtype} {owner.shape}")
    n = len(stats)
    if owner.size and (owner.min() < -1 or owner.max() >= n):
        raise ValueError(f"owner values must lie in -1..{n - 1}")
    # Lower-triangular factors: entry e of every owner in row e (column 0 = no owner = zero noise).
    table = np.zeros((6, n + 1), np.float32)
    rows, cols = np.tril_indices(3)
    for k, s in enumerate(stats):
        table[:, k + 1] = cholesky_psd(s.noise_cov)[rows, cols]
    out = np.empty((*owner.shape, 3), np.float32)
    # Row blocks of ~16000 px: whole-image temporaries (~6 MB) made glibc return memory to the OS
    # after every call and page-fault it back on the next (2-3x the run time); per block they stay
    # small enough to be recycled. Channel-first z keeps the products contiguous (strided: ~8x slower).
    step = max(1, 16000 // max(owner.shape[1], 1))
    for r0 in range(0, owner.shape[0], step):
        o = owner[r0:r0 + step]
        z = std_normal((3, *o.shape), rng)
        c = [np.take(table[e], o + 1) for e in range(6)]
        blk = out[r0:r0 + step]
        blk[..., 0] = c[0] * z[0]
        acc = c[1] * z[0]
        acc += c[2] * z[1]
        blk[..., 1] = acc
        np.multiply(c[3], z[0], out=acc)
        acc += c[4] * z[1]
        acc += c[5] * z[2]
        blk[..., 2] = acc
    return out


def lattice_texture(shape: tuple[int, int], bank: np.ndarray, rng: np.random.Generator, patch: int | None = None,
                    overlap: int = 2) -> np.ndarray:
    """(H, W, 3) float32: random patches of one cohort on a lattice, feather-blended where they overlap.

    ``patch`` (default: the bank's patch size) smaller than the bank's takes random sub-squares.
    """
    bank = np.asarray(bank, np.float32)
    if bank.ndim != 4 or bank.shape[1] != bank.shape[2] or bank.shape[3] != 3 or len(bank) == 0:
        raise ValueError(f"bank must be (n, p, p, 3) with n >= 1, got {bank.shape}")
    p = bank.shape[1] if patch is None else int(patch)
    if not 1 <= p <= bank.shape[1]:
        raise ValueError(f"patch {p} must lie in 1..{bank.shape[1]} (the bank's patch size)")
    if not 0 <= overlap <= p // 2:
        raise ValueError(f"overlap {overlap} must lie in 0..{p // 2} (half the patch)")
    h, w, step = int(shape[0]), int(shape[1]), p - overlap
    # Feathered weights: linear ramps over the overlaps that sum to 1 between neighbours. The lattice
    # starts at -overlap so the unpartnered outer ramps fall outside the canvas: no normalisation.
    ramp = np.minimum(np.minimum(np.arange(1, p + 1), np.arange(p, 0, -1)) / (overlap + 1), 1)
    wts = (ramp[:, None, None] * ramp[None, :, None]).astype(np.float32)
    ny, nx = -(-(h + overlap) // step), -(-(w + overlap) // step)
    pick = rng.integers(0, len(bank), size=(ny, nx))
    if p < bank.shape[1]:
        oy, ox = rng.integers(0, bank.shape[1] - p + 1, size=(2, ny, nx))
        r = np.arange(p)
        patches = bank[pick[..., None, None], (oy[..., None] + r)[..., :, None], (ox[..., None] + r)[..., None, :]]
        patches, pick = patches * wts, np.arange(ny * nx).reshape(ny, nx)
    else:
        patches = bank * wts  # weight the few bank patches, not every lattice cell
    num = np.zeros(((ny + 1) * step, (nx + 1) * step, 3), np.float32)
    s = 2 * step  # cells of one (row, col) parity never overlap: add each class through a strided view
    for a in (0, 1):
        for b in (0, 1):
            grp = patches.reshape(-1, p, p, 3)[pick[a::2, b::2]]  # gathered per class: 4x less temporary memory
            gy, gx = grp.shape[:2]
            if gy and gx:
                view = num[a * step:a * step + gy * s, b * step:b * step + gx * s].reshape(gy, s, gx, s, 3)
                view[:, :p, :, :p] += grp.transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(num[overlap:overlap + h, overlap:overlap + w])
