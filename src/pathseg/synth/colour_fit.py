"""Fitting colour statistics from real labelled images (nuclei + background), texture banks, fit CLI.

The paper estimates "the expectation, the variance and the covariance matrices of the noise ...
from a small sample of patches of real images" after a Reinhard normalisation, and groups lattice
texture patches "into three cohorts depending on the mean color". Only statistics (and, on request,
a texture bank of small patches) leave this module; the fitted JSON carries no pixels. Reinhard
(``reinhard``, ``lab_stats``) is :mod:`pathseg.stain.reinhard`'s, re-exported here.
"""

from __future__ import annotations

import warnings
import zipfile
from datetime import date
from pathlib import Path

import numpy as np
from scipy import ndimage

from pathseg.errors import InputError
from pathseg.io.write import atomic_open
from pathseg.stain.reinhard import (  # re-exported: the one Reinhard of pathseg
    lab_stats,
    reinhard,
)
from pathseg.synth.colour import ColourStats, save_colours

__all__ = [
    "fit_colours", "fit_colours_cli", "lab_stats", "load_texture_bank", "reinhard", "save_texture_bank", "texture_bank",
]

BLOCK = 64  # background cohorts: k-means of the mean colours of 64 px blocks
MAX_KMEANS_PIXELS = 200_000
MIN_OBJECT_PX = 10  # objects with fewer inner pixels give too noisy a mean for a cohort sample
MIN_BLOCK_FRACTION = 0.1


def _as_rgb01(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255
    return np.clip(image.astype(np.float32, copy=False), 0, 1)


def _pooled_lab_stats(images: list[np.ndarray]) -> dict:
    """CIELAB tissue mean/std of a whole set, every image weighted equally (the set's average stain)."""
    stats = [lab_stats(im) for im in images]
    mean = np.mean([s["mean"] for s in stats], axis=0)
    second = np.mean([np.square(s["std"]) + np.square(s["mean"]) for s in stats], axis=0)
    return {"mean": mean.tolist(), "std": np.sqrt(np.maximum(second - mean**2, 1e-6)).tolist()}


# --------------------------------------------------------------------------- texture bank files
def save_texture_bank(path: str | Path, bank: list[np.ndarray]) -> None:
    """Write lattice-texture cohorts (list of (n, p, p, 3) float arrays) as .npz (no pickles)."""
    with atomic_open(path) as fh:
        np.savez_compressed(fh, **{f"cohort{i:02d}": np.asarray(b, np.float32) for i, b in enumerate(bank)})


def load_texture_bank(path: str | Path) -> list[np.ndarray]:
    """Read cohorts written by :func:`save_texture_bank`; InputError when missing or malformed."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            bank = [np.asarray(z[k], np.float32) for k in sorted(z.files)]  # cohort00, cohort01, ...
    except FileNotFoundError:
        raise InputError(f"{path}: texture bank not found") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a texture bank ({_npz_problem(exc)})") from None
    if not bank or any(b.ndim != 4 or not len(b) or b.shape[1] != b.shape[2] or b.shape[3] != 3 for b in bank):
        raise InputError(f"{path}: not a texture bank (expected arrays of (n, p, p, 3) patches, one per cohort)")
    if any(not np.isfinite(b).all() or b.min() < 0 or b.max() > 1 for b in bank):
        raise InputError(f"{path}: not a texture bank (colours must be finite and lie in [0, 1])")
    return bank


def _npz_problem(exc: BaseException) -> str:
    """One line for a failed np.load; never numpy's advice to unpickle (we never do)."""
    text = " ".join(str(exc).split())
    return "not an .npz archive of plain arrays" if "pickle" in text else text


# --------------------------------------------------------------------------- fitting
def _kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(k', 3) k-means centres ordered dark -> bright; k' <= k drops clusters of identical points."""
    # Rounded to 1e-4 (far below 1/255): float noise of smoothing must not count as distinct colours.
    k = min(k, len(np.unique(np.round(x, 4), axis=0))) if len(x) else 0
    if k <= 1:
        return x.mean(0, keepdims=True) if k == 1 else np.zeros((0, x.shape[1]))
    from sklearn.cluster import KMeans

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on near-duplicate points is harmless here
        centres = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(x).cluster_centers_
    return centres[np.argsort(centres.sum(1), kind="stable")]


def _nearest(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return np.argmin(((x[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)


def _erode_labels(labels: np.ndarray) -> np.ndarray:
    """Labels with every pixel that has a differently labelled 4-neighbour set to 0 (1 px erosion)."""
    edge = np.zeros(labels.shape, bool)
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    return np.where(edge, 0, labels)


def _masked_smooth(img: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing within the mask only (normalised convolution): no colour leaks in from outside."""
    m = mask.astype(np.float32)
    num = ndimage.gaussian_filter(img * m[..., None], (sigma, sigma, 0))
    den = ndimage.gaussian_filter(m, sigma)
    return num / np.maximum(den, 1e-6)[..., None]


def _white_residual(sigma: float) -> float:
    """Fraction of unit white noise's variance left in ``x - gaussian_filter(x, sigma)``."""
    r = int(4.0 * sigma + 0.5)  # ndimage's default truncate=4
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    return float(1 - 2 * k[r] ** 2 + (k @ k) ** 2)


class _Acc:
    """Running moments of one category (pixels of many images), its spatial correlation, cohort samples."""

    def __init__(self, lag: int) -> None:
        self.n, self.s, self.lag = 0, np.zeros(3), lag
        self.noise, self.total = np.zeros((3, 3)), np.zeros((3, 3))
        self.pairs = np.zeros(3)  # at distance `lag`: number of pixel pairs, sum dev(p).dev(q), sum |dev|^2
        self.samples: list[np.ndarray] = []

    def add(self, img: np.ndarray, smooth: np.ndarray, where: np.ndarray, group: np.ndarray, min_px: float) -> None:
        """Add the pixels `where`; `group` (same shape, >= 0) ids objects/blocks for texture and cohorts."""
        pix, g = img[where].astype(np.float64), group[where]
        if not len(pix):
            return
        noise = pix - smooth[where]
        count = np.bincount(g)
        used = count > 0
        means = np.stack([np.bincount(g, pix[:, c]) for c in range(3)], 1)[used] / count[used, None]
        # Variation within an object (a block of background): cohorts carry the between-object part.
        dev = pix - means[(np.cumsum(used) - 1)[g]]
        self.n += len(pix)
        self.s += pix.sum(0)
        self.noise += noise.T @ noise
        self.total += dev.T @ dev
        self.samples.append(means[count[used] >= min_px])
        field = np.zeros((*where.shape, 3))
        field[where] = dev
        d = self.lag
        for a, b, both in ((field[d:], field[:-d], where[d:] & where[:-d]),
                           (field[:, d:], field[:, :-d], where[:, d:] & where[:, :-d])):
            self.pairs += (both.sum(), (a * b).sum(-1)[both].sum(), 0.5 * (a * a + b * b).sum(-1)[both].sum())

    def stats(self, sigma: float, cohorts: int, seed: int) -> ColourStats:
        """ColourStats: noise from the fine residual, texture = the rest of the within-object covariance."""
        noise_cov = self.noise / self.n / _white_residual(sigma)  # residual of white noise -> full
        noise_cov = (noise_cov + noise_cov.T) / 2
        # texture + noise = the real within-object covariance, whatever the split missed or shared.
        w, v = np.linalg.eigh(self.total / self.n - noise_cov)
        tex_cov = (v * np.clip(w, 0, None)) @ v.T
        # Correlation length: white noise is uncorrelated at `lag` px, the texture (modelled like the
        # generator's fields) correlates as exp(-lag^2 / (4 s^2)).
        n, cross, var = self.pairs
        tex_var = var / n - np.trace(noise_cov) if n else 0.0
        rho = cross / n / tex_var if n and tex_var > 0 else 0.0
        s = float(self.lag / (2 * np.sqrt(-np.log(rho)))) if 0 < rho < 1 else sigma
        samples = np.concatenate(self.samples) if self.samples else np.zeros((0, 3))
        centres = _kmeans(samples, cohorts, seed) if cohorts > 0 else np.zeros((0, 3))
        return ColourStats(np.clip(self.s / self.n, 0, 1), noise_cov, tex_cov, round(min(max(s, 0.5), 100.0), 3),
                           np.clip(centres, 0, 1) if len(centres) else None)


def fit_colours(images: list[np.ndarray], labels: list[np.ndarray], *, background_clusters: int = 2,
                cohorts: int = 3, texture_sigma: float = 2.0, normalise_to: dict | None = None,
                rng: np.random.Generator | None = None) -> dict[str, ColourStats]:
    """Fit "nucleus" (label > 0) and "background0.." (label 0, k-means, dark -> bright) colour stats.

    Per category, on its pixels 1 px inside their region: noise_cov from the residual image minus
    its masked gaussian_filter(texture_sigma) (rescaled as for white noise); texture_cov = the
    within-object (nucleus) / within-64-px-block (background) covariance minus noise_cov, so texture
    + noise keep the real variance; texture_sigma = that texture's correlation length, measured at
    2 * texture_sigma px; cohorts = k-means of object / block mean colours.
    """
    if len(images) != len(labels) or not images:
        raise ValueError(f"need as many label maps as images (>= 1), got {len(images)} and {len(labels)}")
    if texture_sigma <= 0:
        raise ValueError(f"texture_sigma must be > 0, got {texture_sigma}")
    rng = rng if rng is not None else np.random.default_rng(0)
    imgs = [_as_rgb01(im) for im in images]
    if normalise_to is not None:
        imgs = [reinhard(im, normalise_to) for im in imgs]
    labs = [np.asarray(lab) for lab in labels]
    for i, (im, lab) in enumerate(zip(imgs, labs)):
        if lab.shape != im.shape[:2]:
            raise ValueError(f"image {i}: label map {lab.shape} does not match image {im.shape[:2]}")
    lag = max(1, round(2 * texture_sigma))  # texture correlation is measured at this distance (px)
    nucleus = _Acc(lag)
    for im, lab in zip(imgs, labs):
        fg = lab > 0
        if fg.any():
            inner = _erode_labels(lab)
            nucleus.add(im, _masked_smooth(im, fg, texture_sigma), inner > 0, inner.astype(np.intp), MIN_OBJECT_PX)
    cats: dict[str, ColourStats] = {}
    seed = int(rng.integers(2**31))
    if nucleus.n:
        cats["nucleus"] = nucleus.stats(texture_sigma, cohorts, seed)
    for k, acc in enumerate(_fit_background(imgs, labs, background_clusters, texture_sigma, lag, rng)):
        cats[f"background{k}"] = acc.stats(texture_sigma, cohorts, seed + 1 + k)
    if not cats:
        raise ValueError("no pixels to fit colours from")
    return cats


def _fit_background(imgs: list[np.ndarray], labs: list[np.ndarray], k: int, sigma: float, lag: int,
                    rng: np.random.Generator) -> list[_Acc]:
    """Split background pixels into k colour clusters (dark -> bright) and accumulate each."""
    if k <= 0:
        return []
    # Cluster a coarser smoothing of the background so each cluster forms coherent regions (stroma,
    # glass) instead of salt-and-pepper pixels cut by their noise.
    coarse = max(4.0, 2 * sigma)
    bgs = [lab == 0 for lab in labs]
    feats = [_masked_smooth(im, bg, coarse)[bg] for im, bg in zip(imgs, bgs)]
    per = MAX_KMEANS_PIXELS // len(imgs) + 1
    sample = np.concatenate([f[rng.choice(len(f), min(per, len(f)), replace=False)] for f in feats])
    centres = _kmeans(sample.astype(np.float64), k, int(rng.integers(2**31)))
    accs = [_Acc(lag) for _ in centres]
    for im, lab, bg, feat in zip(imgs, labs, bgs, feats):
        if not len(feat):
            continue
        cat = np.full(lab.shape, -1, np.intp)
        cat[bg] = _nearest(feat, centres)
        inner = _erode_labels(cat + 1) - 1  # 1 px away from nuclei and from other clusters
        rows, cols = np.indices(lab.shape)
        blocks = (rows // BLOCK) * (-(-lab.shape[1] // BLOCK)) + cols // BLOCK
        for c, acc in enumerate(accs):
            region = cat == c
            if region.any():
                acc.add(im, _masked_smooth(im, region, sigma), inner == c, blocks, MIN_BLOCK_FRACTION * BLOCK**2)
    return [acc for acc in accs if acc.n]


def texture_bank(images: list[np.ndarray], labels: list[np.ndarray], patch: int = 8, cohorts: int = 3,
                 max_patches: int = 3000, rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Random p x p patches lying fully inside one object, grouped by k-means of their mean colour.

    Returns one float32 (n_i, p, p, 3) array per cohort, dark -> bright (lattice_texture's banks).
    """
    from numpy.lib.stride_tricks import sliding_window_view

    rng = rng if rng is not None else np.random.default_rng(0)
    where: list[np.ndarray] = []
    for i, lab in enumerate(labels):
        lab = np.asarray(lab)
        if min(lab.shape) < patch:
            continue
        win = sliding_window_view(lab, (patch, patch))
        lo, hi = win.min(axis=(2, 3)), win.max(axis=(2, 3))
        ys, xs = np.nonzero((lo == hi) & (lo > 0))  # top-left corners of windows inside one object
        where.append(np.stack([np.full(len(ys), i), ys, xs], 1))
    cand = np.concatenate(where) if where else np.zeros((0, 3), int)
    if not len(cand):
        raise ValueError(f"no object is large enough to hold a {patch} x {patch} px patch")
    cand = cand[np.sort(rng.choice(len(cand), min(max_patches, len(cand)), replace=False))]
    r = np.arange(patch)
    patches = np.empty((len(cand), patch, patch, 3), np.float32)
    for i in np.unique(cand[:, 0]):
        sel = cand[:, 0] == i
        im = _as_rgb01(images[i])
        patches[sel] = im[cand[sel, 1, None, None] + r[:, None], cand[sel, 2, None, None] + r[None, :]]
    means = patches.mean(axis=(1, 2)).astype(np.float64)
    centres = _kmeans(means, max(1, cohorts), int(rng.integers(2**31)))
    group = _nearest(means, centres)
    return [patches[group == c] for c in range(len(centres)) if (group == c).any()]


def fit_colours_cli(data: Path, out: Path, reference: Path | None, cohorts: int, background_clusters: int,
                    textures: bool, max_images: int | None) -> dict:
    """`pathseg synth fit-colours`: fit DIR/images + DIR/labels, write the colour JSON (+ texture bank)."""
    from pathseg._version import __version__
    from pathseg.io import check_pair, list_samples, read_image, read_label

    data, out = Path(data), Path(out)
    samples = list_samples(data)
    if max_images is not None:
        samples = samples[: max(1, int(max_images))]
    images, labels = [], []
    for s in samples:
        image, _ = read_image(s.image)
        label = read_label(s.label)
        check_pair(image, label, s.name)
        images.append(_as_rgb01(image))
        labels.append(label)
    n_objects = sum(len(np.unique(lab[lab > 0])) for lab in labels)
    if n_objects == 0:
        raise InputError(f"{data}: the label maps hold no objects (fit-colours needs labelled nuclei)")
    if reference is not None:
        target = lab_stats(read_image(reference)[0])
    else:  # every image is moved to the set's average stain
        target = _pooled_lab_stats(images)
    normed = [reinhard(im, target) for im in images]
    cats = fit_colours(normed, labels, background_clusters=background_clusters, cohorts=cohorts,
                       rng=np.random.default_rng(0))
    command = f"pathseg synth fit-colours --data {data} --out {out} --cohorts {cohorts} " \
              f"--background-clusters {background_clusters}"
    command += (f" --reference {reference}" if reference else "") + (" --textures" if textures else "")
    command += f" --max-images {max_images}" if max_images is not None else ""
    meta = {"command": command, "data": str(data), "split": data.name, "images": len(images),
            "objects": int(n_objects), "date": date.today().isoformat(), "pathseg": __version__,
            "reference": str(reference) if reference else "mean CIELAB tissue (L <= 90) stats of the images",
            "note": "colour statistics only; no pixels of the source images"}
    save_colours(out, cats, reference=target, meta=meta)
    bank_path = None
    if textures:
        try:
            bank = texture_bank(normed, labels, cohorts=cohorts, rng=np.random.default_rng(1))
        except ValueError as exc:
            raise InputError(f"{data}: cannot cut texture patches ({exc})") from None
        bank_path = out.with_name(f"{out.name.removesuffix('.json')}.textures.npz")
        save_texture_bank(bank_path, bank)
    return {"out": str(out), "images": len(images), "objects": int(n_objects),
            "categories": {k: [round(float(v), 4) for v in s.mean] for k, s in cats.items()},
            "textures": str(bank_path) if bank_path else None}
