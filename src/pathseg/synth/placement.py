"""Placing object patches on a canvas: random or without overlap, always with a bounded effort.

A patch's position is its top-left (row, col) on the canvas; its centre pixel is
(row + h // 2, col + w // 2) and always lies inside the canvas, while the patch itself may be
clipped at the canvas borders.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from pathseg.errors import InputError

__all__ = ["PlacementError", "capacity_check", "crop_slices", "paste", "place_masks"]


class PlacementError(InputError):
    """Objects of a layer cannot be placed as the scene asks (message names the layer)."""


def place_masks(canvas: tuple[int, int], masks: list[np.ndarray], rng: np.random.Generator, *,
                overlap: bool = True, allowed: np.ndarray | None = None,
                occupied: np.ndarray | None = None, gap: int = 0, tries: int = 200,
                centre_allowed: bool = True) -> list[tuple[int, int] | None]:
    """Top-left (row, col) of each patch, or None for a patch that found no place in `tries` draws."""
    hh, ww = int(canvas[0]), int(canvas[1])
    if allowed is not None and allowed.shape != (hh, ww):
        raise ValueError(f"place_masks: allowed has shape {allowed.shape}, canvas is {(hh, ww)}")
    if occupied is not None and occupied.shape != (hh, ww):
        raise ValueError(f"place_masks: occupied has shape {occupied.shape}, canvas is {(hh, ww)}")
    if not masks:
        return []
    masks = [np.asarray(m, bool) for m in masks]
    centre_pool = np.flatnonzero(allowed) if (allowed is not None and centre_allowed) else None
    if centre_pool is not None and len(centre_pool) == 0:
        return [None] * len(masks)
    if overlap and (allowed is None or centre_allowed):
        # Nothing to check per patch: one vectorised draw of all centres.
        k = len(masks)
        centres = rng.integers(0, hh * ww, k) if centre_pool is None else centre_pool[rng.integers(0, len(centre_pool), k)]
        out = [(int(c // ww) - m.shape[0] // 2, int(c % ww) - m.shape[1] // 2) for c, m in zip(centres, masks)]
        if occupied is not None:
            for m, tl in zip(masks, out):
                paste(occupied, True, tl, where=m)
        return out
    return _place_checked(hh, ww, masks, rng, overlap, allowed, occupied, gap, tries, centre_pool)


def _stack_offsets(masks: list[np.ndarray], gap: int, row_stride: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per mask: flat offsets of its pixels and of its pixels dilated by `gap` (about the centre).

    All masks are stacked on a common centred grid so that the dilation and the offset arithmetic
    run once for the whole layer instead of ~10 small numpy calls per object.
    """
    ry = max(max(m.shape[0] // 2, m.shape[0] - 1 - m.shape[0] // 2) for m in masks) + gap
    rx = max(max(m.shape[1] // 2, m.shape[1] - 1 - m.shape[1] // 2) for m in masks) + gap
    stack = np.zeros((len(masks), 2 * ry + 1, 2 * rx + 1), bool)
    for k, m in enumerate(masks):
        y0, x0 = ry - m.shape[0] // 2, rx - m.shape[1] // 2
        stack[k, y0:y0 + m.shape[0], x0:x0 + m.shape[1]] = m

    def split(st: np.ndarray) -> list[np.ndarray]:
        k, y, x = np.nonzero(st)
        offsets = (y - ry) * row_stride + (x - rx)
        return np.split(offsets, np.cumsum(np.bincount(k, minlength=len(masks)))[:-1])

    own = split(stack)
    if gap <= 0:
        return own, own
    yy, xx = np.mgrid[-gap:gap + 1, -gap:gap + 1]
    grown = ndi.binary_dilation(stack, structure=(yy * yy + xx * xx <= gap * gap)[None])
    return own, split(grown)


def _place_checked(hh: int, ww: int, masks: list[np.ndarray], rng: np.random.Generator, overlap: bool,
                   allowed: np.ndarray | None, occupied: np.ndarray | None, gap: int, tries: int,
                   centre_pool: np.ndarray | None) -> list[tuple[int, int] | None]:
    """Rejection sampling; each candidate is tested by gathering the canvas under the patch's pixels.

    The canvases are padded so that every patch pixel of a centre inside the canvas has a valid
    flat index (no clipping logic per candidate); padding counts as free and allowed, because
    patches may be clipped at the canvas borders.
    """
    gap = max(int(gap), 0) if not overlap else 0
    pad = max(max(m.shape) for m in masks) // 2 + gap + 1
    wp = ww + 2 * pad
    occ = np.zeros((hh + 2 * pad, wp), bool)
    if occupied is not None:
        occ[pad:pad + hh, pad:pad + ww] = occupied
    occ_flat = occ.reshape(-1)
    forbidden = None
    if allowed is not None and centre_pool is None:  # the whole patch must lie in `allowed`
        forbidden = np.zeros_like(occ)
        forbidden[pad:pad + hh, pad:pad + ww] = ~allowed
        forbidden = forbidden.reshape(-1)
    # The gap is applied to each new patch only (the canvas holds raw masks), so any two objects
    # end up more than `gap` px apart.
    owns, tests = _stack_offsets(masks, gap, wp)
    centre_in = [bool(m[m.shape[0] // 2, m.shape[1] // 2]) for m in masks]
    base_mask = None if centre_pool is None else _unflat(centre_pool, hh, ww)
    pool = centre_pool

    def draw(k: int) -> np.ndarray:  # padded flat indices of k random centres
        c = rng.integers(0, hh * ww, k) if pool is None else pool[rng.integers(0, len(pool), k)]
        return (c // ww + pad) * wp + (c % ww + pad)

    first = min(16, tries)
    # The first batch of every patch in one draw: most patches fit in it on uncrowded canvases.
    firsts = draw(first * len(masks)).reshape(len(masks), first) if first > 0 else None
    out: list[tuple[int, int] | None] = []
    for i, mask in enumerate(masks):
        own, test = owns[i], tests[i]
        left, batch, placed = tries, first, None
        while left > 0 and placed is None:
            if pool is not None and len(pool) == 0:
                break
            k = min(batch, left)
            flat = firsts[i] if left == tries else draw(k)
            left -= k
            batch = min(batch * 2, 128)  # crowded canvases need many draws: grow the batch
            if not overlap:
                if centre_in[i]:
                    free = ~occ_flat[flat]
                    if 2 * int(free.sum()) < k:
                        # Most centres are taken: rebuild the pool of free centres (O(H*W)) so that
                        # later draws stop landing on objects.
                        room = ~occ[pad:pad + hh, pad:pad + ww]
                        pool = np.flatnonzero(room if base_mask is None else room & base_mask)
                    flat = flat[free]
                flat = flat[~occ_flat[flat[:, None] + test[None, :]].any(axis=1)]
            if forbidden is not None and len(flat):
                flat = flat[~forbidden[flat[:, None] + own[None, :]].any(axis=1)]
            if len(flat):
                r, c = divmod(int(flat[0]), wp)
                placed = (r - pad - mask.shape[0] // 2, c - pad - mask.shape[1] // 2)
                occ_flat[flat[0] + own] = True
        out.append(placed)
    if occupied is not None:
        occupied |= occ[pad:pad + hh, pad:pad + ww]
    return out


def _unflat(pool: np.ndarray, hh: int, ww: int) -> np.ndarray:
    m = np.zeros(hh * ww, bool)
    m[pool] = True
    return m.reshape(hh, ww)


def capacity_check(layer: str, n: int, mean_area: float, free_area: float, packing: float = 0.6) -> None:
    """Raise PlacementError when n objects of mean_area px^2 cannot fit packing * free_area px^2."""
    need = n * mean_area
    if need > packing * free_area:
        raise PlacementError(
            f"layer '{layer}': {n} objects of ~{mean_area:.0f} px^2 need ~{need:.0f} px^2 "
            f"(~{need / packing:.0f} px^2 at {packing:.0%} packing) but only {free_area:.0f} px^2 "
            "are free; lower count or size")


def work_check(layer: str, n: int, patch_px: float, canvas_px: float, build_cost: float = 1.0, pool: int = 0,
               budget: float = 400.0, pool_budget: float = 3e8) -> None:
    """Raise PlacementError when a layer's objects would take minutes per image to draw.

    Time grows with count x patch area, and with the outlines drawn (fast marching costs
    ~build_cost times more per px): once per image per object (pool 0) or once per process for
    a pool. Past these limits a valid-looking script reads as a hang, so it is refused up front.
    """
    per_image = n * patch_px * (1.0 + (build_cost if pool <= 0 else 0.0))
    once = pool * patch_px * build_cost if pool > 0 else 0.0
    if per_image > budget * canvas_px or once > pool_budget:
        raise PlacementError(
            f"layer '{layer}': {n} objects of up to ~{patch_px:.0f} px^2 are too much work to draw "
            f"(~{max(per_image, once):.2g} px; the limit is ~{budget:.0f}x the {canvas_px:.0f} px^2 canvas "
            "per image); lower count or size (or the shape's pool)")


def crop_slices(canvas: tuple[int, int], shape: tuple[int, int],
                top_left: tuple[int, int]) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """(canvas slices, patch slices) of a patch at top_left after clipping to the canvas."""
    (hh, ww), (h, w) = canvas[:2], shape[:2]
    r, c = int(top_left[0]), int(top_left[1])
    r0, c0 = max(r, 0), max(c, 0)
    r1, c1 = max(min(r + h, hh), r0), max(min(c + w, ww), c0)
    return (slice(r0, r1), slice(c0, c1)), (slice(r0 - r, r1 - r), slice(c0 - c, c1 - c))


def paste(canvas: np.ndarray, patch: np.ndarray | bool | float, top_left: tuple[int, int],
          where: np.ndarray | None = None) -> None:
    """Write `patch` into `canvas` at top_left, clipped at the borders, only where `where` is True."""
    if np.ndim(patch) == 0 and where is None:
        raise ValueError("paste: a scalar patch needs a `where` mask to give it a shape")
    shape = where.shape if np.ndim(patch) == 0 else np.shape(patch)
    (cs, patch_slices) = crop_slices(canvas.shape, shape[:2], top_left)
    target = canvas[cs]
    if target.size == 0:
        return
    src = patch if np.ndim(patch) == 0 else np.asarray(patch)[patch_slices]
    if where is None:
        target[...] = src
    else:
        w = where[patch_slices]
        if target.ndim == 3 and w.ndim == 2:
            w = w[..., None]
        np.copyto(target, src, where=np.broadcast_to(w, target.shape))
