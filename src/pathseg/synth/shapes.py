"""Object shapes as small bool patches: ellipses, irregular outlines, fast-marching cells, real nuclei.

Every patch is centred: its centre pixel is (h // 2, w // 2) with odd h and w (except bank patches,
which keep their bounding box), so placement only deals with top-left corners and centres.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from pathseg.errors import InputError
from pathseg.synth.fields import travel_time, velocity_field

__all__ = ["PatchBank", "ellipse_mask", "fmm_cell_mask", "irregular_mask"]

# Cap on fast-marching speeds for single cells: it bounds how far a cell can grow in time `grow`
# (so the patch margin is known in advance) without visibly changing the outline.
_MAX_SPEED = 2.0
_BANK_FORMAT = "pathseg-patch-bank-1"
_N_ANGLES = 256
_ANGLES = np.linspace(-np.pi, np.pi, _N_ANGLES, endpoint=False)
_CROSS = ndi.generate_binary_structure(2, 1)


def _extents(a: float, b: float, theta: float) -> tuple[float, float]:
    """Half height and half width of the bounding box of a rotated ellipse."""
    c, s = np.cos(theta), np.sin(theta)
    return float(np.hypot(a * s, b * c)), float(np.hypot(a * c, b * s))


def _ellipse_coords(a: float, b: float, theta: float, hy: int, hx: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates of a (2hy+1, 2hx+1) grid in the ellipse frame, scaled by the semi-axes."""
    yy = np.arange(-hy, hy + 1, dtype=np.float32)[:, None]  # broadcasting: np.mgrid costs ~25 us
    xx = np.arange(-hx, hx + 1, dtype=np.float32)[None, :]
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    # theta turns the a-axis from the image x axis towards +y (rows), as skimage.draw.ellipse does.
    u = (xx * c + yy * s) / np.float32(a)
    v = (-xx * s + yy * c) / np.float32(b)
    return u, v


def _check_axes(a: float, b: float) -> None:
    if not (a >= 0.5 and b >= 0.5):
        raise ValueError(f"semi-axes must be >= 0.5 px, got a={a}, b={b}")


def ellipse_mask(a: float, b: float, theta: float) -> np.ndarray:
    """Bool patch (odd sides) holding a centred ellipse with semi-axes a, b px, rotated by theta rad."""
    _check_axes(a, b)
    ey, ex = _extents(a, b, theta)
    u, v = _ellipse_coords(a, b, theta, int(np.ceil(ey)), int(np.ceil(ex)))
    return u * u + v * v <= 1.0


def irregular_mask(a: float, b: float, theta: float, rng: np.random.Generator,
                   roughness: float = 0.25, lobes: int = 6) -> np.ndarray:
    """Bool patch: ellipse with a smooth random periodic radius (modes 2..lobes), one component."""
    _check_axes(a, b)
    modes = np.arange(2, max(int(lobes), 2) + 1)
    # Amplitudes fall off as 1/k so low modes shape the outline and high ones only ruffle it.
    amp = rng.uniform(0.3, 1.0, len(modes)) / modes
    phase = rng.uniform(0, 2 * np.pi, len(modes))
    # The radius is tabulated over 256 angles (one small matrix product) and looked up per pixel:
    # ~5x cheaper than evaluating the modes at every pixel.
    wave = amp @ np.cos(modes[:, None] * _ANGLES[None, :] + phase[:, None])
    wave /= np.abs(wave).max() + 1e-12
    # Never below 30% of the ellipse: the centre stays inside and spikes stay fat.
    table = np.maximum(1.0 + float(roughness) * wave, 0.3).astype(np.float32)
    ey, ex = _extents(a, b, theta)
    grow_max = float(table.max())
    u, v = _ellipse_coords(a, b, theta, int(np.ceil(ey * grow_max)), int(np.ceil(ex * grow_max)))
    idx = ((np.arctan2(v, u) + np.pi) * (_N_ANGLES / (2 * np.pi))).astype(np.intp) % _N_ANGLES
    radius = table[idx]
    mask = u * u + v * v <= radius * radius
    cy, cx = mask.shape[0] // 2, mask.shape[1] // 2
    mask[cy, cx] = True
    # A star-shaped outline is connected in the plane but its pixel sampling may not be: keep the
    # component of the centre.
    lab, n = ndi.label(mask, _CROSS)
    if n > 1:
        mask = lab == lab[cy, cx]
    return mask


def fmm_cell_mask(seed: np.ndarray, rng: np.random.Generator, grow: float, sigma: float = 6.0,
                  spread: float = 0.5) -> np.ndarray:
    """Bool patch: a cell grown from `seed` by local fast marching up to time `grow`, seed centred."""
    seed = np.asarray(seed, bool)
    if seed.ndim != 2 or not seed.any():
        raise ValueError("fmm_cell_mask: seed must be a 2-D bool patch with at least one True pixel")
    pad = int(np.ceil(grow * _MAX_SPEED)) + 2
    init = np.pad(seed, pad)
    speed = np.minimum(velocity_field(init.shape, rng, sigma=sigma, spread=spread), _MAX_SPEED)
    t = travel_time(init, speed, narrow=grow + 1.0)
    cell = (t <= grow) | init
    # Crop symmetrically around the seed's centre so that it stays the patch centre (odd sides).
    cy, cx = seed.shape[0] // 2 + pad, seed.shape[1] // 2 + pad
    rows, cols = np.flatnonzero(cell.any(1)), np.flatnonzero(cell.any(0))
    ry = max(cy - rows[0], rows[-1] - cy)
    rx = max(cx - cols[0], cols[-1] - cx)
    return cell[cy - ry:cy + ry + 1, cx - rx:cx + rx + 1].copy()


def _bbox_crop(mask: np.ndarray, margin: int = 1) -> tuple[slice, slice]:
    """Slices of the mask's bounding box grown by `margin` px, clipped to the array."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return slice(0, 0), slice(0, 0)
    return (slice(max(rows[0] - margin, 0), min(rows[-1] + margin + 1, mask.shape[0])),
            slice(max(cols[0] - margin, 0), min(cols[-1] + margin + 1, mask.shape[1])))


def _as_unit_rgb(image: np.ndarray) -> np.ndarray:
    """Float32 (H, W, 3) in [0, 1] from uint8/uint16/float input (grey and RGBA accepted)."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    return np.clip(img.astype(np.float32), 0.0, 1.0)


def _padded_source(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(h + 2, w + 2, 4) float32: colour edge-padded (no dark fringe), mask zero-padded."""
    src = np.empty((mask.shape[0] + 2, mask.shape[1] + 2, 4), np.float32)
    src[..., :3] = np.pad(rgb, ((1, 1), (1, 1), (0, 0)), mode="edge")
    src[..., 3] = np.pad(mask, 1)
    return src


def _rotate(src: np.ndarray, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate a padded source by theta rad onto a canvas that holds all its corners (bilinear).

    Colour and mask are sampled together (~3x faster than two scipy.ndimage.rotate calls); the
    mask is thresholded at 0.5, which keeps its area and gives smoother outlines than order 0.
    """
    h, w = src.shape[0] - 2, src.shape[1] - 2
    c, s = abs(np.cos(theta)), abs(np.sin(theta))
    ho, wo = int(np.ceil(h * c + w * s - 1e-6)), int(np.ceil(w * c + h * s - 1e-6))
    yo = (np.arange(ho, dtype=np.float32) - (ho - 1) / 2)[:, None]
    xo = (np.arange(wo, dtype=np.float32) - (wo - 1) / 2)[None, :]
    ct, st = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    # Inverse map of each output pixel into the (1-px padded) source.
    y = ct * yo - st * xo + (h - 1) / 2 + 1
    x = st * yo + ct * xo + (w - 1) / 2 + 1
    y = np.clip(y, 0, h + 1 - 1e-4)
    x = np.clip(x, 0, w + 1 - 1e-4)
    y0, x0 = np.minimum(y.astype(np.intp), h), np.minimum(x.astype(np.intp), w)
    fy, fx = (y - y0)[..., None], (x - x0)[..., None]
    flat, k = src.reshape(-1, 4), y0 * (w + 2) + x0  # row gathers via take: ~2x faster than src[y, x]
    top = flat.take(k, axis=0) * (1 - fx) + flat.take(k + 1, axis=0) * fx
    bottom = flat.take(k + w + 2, axis=0) * (1 - fx) + flat.take(k + w + 3, axis=0) * fx
    out = top + (bottom - top) * fy
    return out[..., :3], out[..., 3] >= 0.5


@dataclass
class PatchBank:
    """Real nucleus patches (RGB + mask) that the generator places with random rotations."""

    rgb: list[np.ndarray] = field(default_factory=list)   # float32 (h, w, 3) per nucleus
    mask: list[np.ndarray] = field(default_factory=list)  # bool (h, w)
    # Padded 4-channel sources for _rotate, built on first use (np.pad costs ~30 us per call).
    _sources: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        """Number of patches."""
        return len(self.mask)

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One random patch (rgb float32, mask bool) rotated by a random angle, cropped to bbox + 1 px."""
        if not self.mask:
            raise ValueError("PatchBank.sample: the bank is empty")
        i = int(rng.integers(len(self.mask)))
        angle = float(rng.uniform(0.0, 360.0))
        if i not in self._sources:
            self._sources[i] = _padded_source(self.rgb[i], self.mask[i])
        rgb, mask = _rotate(self._sources[i], np.deg2rad(angle))
        if not mask.any():  # degenerate one-pixel patches can rotate away; keep them unrotated
            rgb, mask = self.rgb[i], self.mask[i]
        sy, sx = _bbox_crop(mask)
        return np.clip(rgb[sy, sx], 0.0, 1.0).astype(np.float32, copy=False), mask[sy, sx].copy()

    @classmethod
    def from_labelled(cls, images: list[np.ndarray], labels: list[np.ndarray], max_patches: int = 500,
                      min_area: int = 20, rng: np.random.Generator | None = None) -> PatchBank:
        """Cut every labelled object (bounding box + 1 px) of >= min_area px; keep <= max_patches."""
        if len(images) != len(labels):
            raise ValueError(f"from_labelled: {len(images)} images but {len(labels)} label maps")
        rgbs, masks = [], []
        for image, label in zip(images, labels):
            img = _as_unit_rgb(image)
            lab = np.asarray(label)
            if img.shape[:2] != lab.shape:
                raise ValueError(f"from_labelled: image {img.shape[:2]} and labels {lab.shape} differ")
            for k, sl in enumerate(ndi.find_objects(lab), start=1):
                if sl is None:
                    continue
                sy = slice(max(sl[0].start - 1, 0), min(sl[0].stop + 1, lab.shape[0]))
                sx = slice(max(sl[1].start - 1, 0), min(sl[1].stop + 1, lab.shape[1]))
                m = lab[sy, sx] == k
                if m.sum() < min_area:
                    continue
                rgbs.append(img[sy, sx].copy())
                masks.append(m)
        if not masks:
            raise InputError(f"patch bank: no labelled object of >= {min_area} px in {len(labels)} label images")
        if len(masks) > max_patches:
            rng = rng if rng is not None else np.random.default_rng(0)
            keep = np.sort(rng.choice(len(masks), size=max_patches, replace=False))
            rgbs, masks = [rgbs[i] for i in keep], [masks[i] for i in keep]
        return cls(rgb=rgbs, mask=masks)

    def save(self, path: Path) -> None:
        """Write a compressed .npz of flat packed arrays + shapes (loads with allow_pickle=False)."""
        path = Path(path)
        shapes = np.array([m.shape for m in self.mask], np.int64).reshape(-1, 2)
        rgb = np.concatenate([r.astype(np.float32).ravel() for r in self.rgb]) if self.rgb else np.zeros(0, np.float32)
        mask = np.concatenate([m.ravel() for m in self.mask]) if self.mask else np.zeros(0, bool)
        with open(path, "wb") as f:  # a file object stops numpy from appending ".npz" to the name
            np.savez_compressed(f, format=np.array(_BANK_FORMAT), shapes=shapes, rgb=rgb, mask=mask)

    @classmethod
    def load(cls, path: Path) -> PatchBank:
        """Read a bank written by save(); InputError '<path>: not a patch bank (...)' when malformed."""
        path = Path(path)

        def bad(why: str) -> InputError:
            return InputError(f"{path}: not a patch bank ({why})")

        if not path.is_file():
            raise InputError(f"{path}: patch bank file not found")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            text = " ".join(str(exc).split())
            # numpy's message for non-npz files advises unpickling; we never unpickle.
            raise bad("not an .npz archive of plain arrays" if "pickle" in text else f"unreadable: {text}") from exc
        missing = [k for k in ("format", "shapes", "rgb", "mask") if k not in arrays]
        if missing:
            raise bad(f"missing arrays {', '.join(missing)}")
        if str(arrays["format"]) != _BANK_FORMAT:
            raise bad(f"format {str(arrays['format'])!r}, expected {_BANK_FORMAT!r}")
        shapes, rgb, mask = arrays["shapes"], arrays["rgb"], arrays["mask"]
        if shapes.ndim != 2 or shapes.shape[1] != 2 or shapes.dtype.kind not in "iu" or (shapes < 1).any():
            raise bad("shapes must be an (n, 2) array of positive integers")
        if len(shapes) == 0:
            raise bad("no patches")
        sizes = shapes[:, 0] * shapes[:, 1]
        if mask.ndim != 1 or mask.size != sizes.sum() or mask.dtype != bool:
            raise bad(f"mask holds {mask.size} values, shapes need {int(sizes.sum())} bools")
        if rgb.ndim != 1 or rgb.size != 3 * sizes.sum() or rgb.dtype.kind != "f":
            raise bad(f"rgb holds {rgb.size} values, shapes need {int(3 * sizes.sum())} floats")
        if not np.isfinite(rgb).all() or (rgb.size and (rgb.min() < 0 or rgb.max() > 1)):
            raise bad("rgb values must be finite and lie in [0, 1]")
        ends = np.cumsum(sizes)
        starts = ends - sizes
        rgbs = [rgb[3 * s:3 * e].reshape(h, w, 3).astype(np.float32) for s, e, (h, w) in zip(starts, ends, shapes)]
        masks = [mask[s:e].reshape(h, w).copy() for s, e, (h, w) in zip(starts, ends, shapes)]
        empty = [i for i, m in enumerate(masks) if not m.any()]
        if empty:
            raise bad(f"patch {empty[0]} has an empty mask")
        return cls(rgb=rgbs, mask=masks)
