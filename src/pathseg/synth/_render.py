"""Render one layer of a scene: geometry (fill, ribbons, objects) and colour (texture, cohorts, outline)."""

from __future__ import annotations

import math
import zlib
from functools import lru_cache

import numpy as np
from scipy import ndimage

from pathseg.synth import fields, shapes
from pathseg.synth.colour import (
    ColourStats,
    cholesky_psd,
    lattice_texture,
    texture_fields,
)
from pathseg.synth.placement import place_masks
from pathseg.synth.rules import LayerState, ObjectRecord, object_slices
from pathseg.synth.spec import LayerSpec, RegionSpec, ShapeSpec

__all__ = ["Context", "paint_layer", "region_mask", "render_geometry"]

# Layers without colour statistics (patch layers) still need an entry in the noise table.
_FLAT = ColourStats(mean=np.full(3, 0.5), noise_cov=np.zeros((3, 3)), texture_cov=np.zeros((3, 3)))


class Context:
    """Per-sample state shared by the layers: canvas, rng, regions, rendered layers, object ids."""

    def __init__(self, shape: tuple[int, int], rng: np.random.Generator, count_scale: float) -> None:
        self.shape, self.rng, self.count_scale = shape, rng, count_scale
        self.regions: dict[str, np.ndarray] = {}
        self.states: dict[str, LayerState] = {}
        self.next_id = 1
        self._fields: dict[float, dict[tuple[int, int], np.ndarray]] = {}

    def area(self, region: str | None, invert: bool) -> np.ndarray | None:
        """Bool mask of a named region (inverted on request), None = whole canvas."""
        if region is None:
            return None
        return ~self.regions[region] if invert else self.regions[region]

    def texture(self, sigma: float, idx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(unit texture fields (H, W, 3) or (n, 3) at flat pixels idx, 3x3 channel mix E): a new variant per call.

        Drawing fields is the largest cost of a layer: later layers with the same sigma reuse them
        flipped, with channels permuted and sign-flipped (fields @ E), which looks uncorrelated.
        """
        if sigma not in self._fields:
            self._fields[sigma] = {(0, 0): texture_fields(self.shape, sigma, self.rng)}
            orient, mix = (0, 0), np.eye(3, dtype=np.float32)
        else:
            orient = tuple(int(v) for v in self.rng.integers(0, 2, 2))
            mix = np.zeros((3, 3), np.float32)
            mix[self.rng.permutation(3), np.arange(3)] = np.where(self.rng.integers(0, 2, 3) == 1, 1.0, -1.0)
        variants = self._fields[sigma]
        if orient not in variants:  # a contiguous flipped copy, so sparse gathers stay one fancy index
            variants[orient] = np.ascontiguousarray(variants[(0, 0)][:: 1 - 2 * orient[0], :: 1 - 2 * orient[1]])
        tex = variants[orient]
        return (tex if idx is None else tex.reshape(-1, 3)[idx]), mix


def region_mask(spec: RegionSpec, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Bool (H, W): k of n random Voronoi or fast-marching regions."""
    if spec.kind == "voronoi":
        labels = fields.voronoi_regions(shape, spec.n, rng)
    else:
        labels = fields.fmm_regions(shape, spec.n, rng, sigma=spec.sigma, spread=spec.spread, scale=spec.scale)
    return fields.pick_regions(labels, spec.n, spec.k, rng)


def _draw_shapes(spec: ShapeSpec, n: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """n objects as (bool mask patch, rgb patch or None)."""
    if spec.kind == "patches":
        return [tuple(reversed(spec.bank.sample(rng))) for _ in range(n)]
    if spec.pool <= 0:
        return [(_fresh_shape(spec, rng), None) for _ in range(n)]
    pool = _pool(spec.kind, spec.semi_axes, spec.roughness, spec.lobes, spec.grow, spec.sigma, spec.spread,
                 spec.pool)
    return [(pool[i], None) for i in rng.integers(0, len(pool), n)]


def _fresh_shape(spec: ShapeSpec, rng: np.random.Generator) -> np.ndarray:
    (alo, ahi), (blo, bhi) = spec.semi_axes
    a, b, theta = rng.uniform(alo, ahi), rng.uniform(blo, bhi), rng.uniform(0.0, math.pi)
    if spec.kind == "ellipse":
        return shapes.ellipse_mask(a, b, theta)
    if spec.kind == "irregular":
        return shapes.irregular_mask(a, b, theta, rng, roughness=spec.roughness, lobes=spec.lobes)
    seed = shapes.ellipse_mask(a, b, theta)
    return shapes.fmm_cell_mask(seed, rng, spec.grow, sigma=spec.sigma, spread=spec.spread)


@lru_cache(maxsize=64)
def _pool(kind: str, semi_axes: tuple, roughness: float, lobes: int, grow: float, sigma: float, spread: float,
          size: int) -> tuple[np.ndarray, ...]:
    """Pooled outlines (size x 8 orientations) per shape spec, built once per process, seeded by the spec.

    A fresh irregular outline costs ~0.25 ms and an fmm cell ~0.5 ms: 80 of them would eat the
    50 ms budget of a whole scene, while picking one of 256 pooled outlines x 8 flips costs ~1 us.
    """
    key = repr((kind, semi_axes, roughness, lobes, grow, sigma, spread, size)).encode()
    rng = np.random.default_rng(zlib.crc32(key))
    spec = ShapeSpec(kind, semi_axes, roughness, lobes, grow, sigma, spread, pool=0)
    out = []
    for _ in range(size):
        m = _fresh_shape(spec, rng)
        m.setflags(write=False)
        # The 8 flips / quarter turns (views; odd sides keep the centre pixel): 8x the variety.
        t = m.T
        out += [m, m[::-1], m[:, ::-1], m[::-1, ::-1], t, t[::-1], t[:, ::-1], t[::-1, ::-1]]
    return tuple(out)


def render_geometry(spec: LayerSpec, ctx: Context) -> tuple[LayerState, list[np.ndarray | None]]:
    """Coverage, labels and objects of one layer (+ per-object rgb patches for patch shapes)."""
    shape, rng = ctx.shape, ctx.rng
    state = LayerState(spec.name, spec.category, alpha=np.empty(0, np.float32), coverage=np.empty(0, bool))
    rgbs: list[np.ndarray | None] = []
    if spec.kind == "fill":
        area = ctx.area(spec.fill_region, spec.fill_invert)
        state.coverage = np.ones(shape, bool) if area is None else area.copy()
    elif spec.kind == "ribbons":
        r = spec.ribbons
        state.coverage = fields.ribbons(shape, rng, region=ctx.area(r.region, r.invert), n_maps=r.n_maps,
                                        width=r.width, sigma=r.sigma, spread=r.spread)
    else:
        labels = np.zeros(shape, np.int32)
        kind = spec.placement.kind
        if kind in ("random", "no_overlap"):
            placed = _place(spec, ctx)
        elif kind == "inside":
            placed = _inside(spec, ctx)
        else:
            placed = _grow(spec, ctx)
        for mask, rgb, top, left, parent in placed:
            rec = ObjectRecord(ctx.next_id, top, left, mask, parent=parent)
            canvas, patch = object_slices(shape, rec)
            m = mask[patch]
            if not m.any():
                continue  # entirely off the canvas after clipping
            labels[canvas][m] = rec.id
            ctx.next_id += 1
            state.objects.append(rec)
            rgbs.append(rgb)
        state.labels = labels
        state.coverage = labels > 0
    state.alpha = state.coverage.astype(np.float32) * np.float32(spec.visibility)
    return state, rgbs


def _place(spec: LayerSpec, ctx: Context) -> list[tuple]:
    p, rng = spec.placement, ctx.rng
    n = int(rng.integers(p.count[0], p.count[1] + 1))
    n = round(n * ctx.count_scale)  # same density when another canvas size is asked for
    drawn = _draw_shapes(spec.shape, n, rng)
    if not drawn:
        return []
    allowed = ctx.area(p.region, p.invert)
    occupied = None
    if p.avoid:
        occupied = np.zeros(ctx.shape, bool)
        for name in p.avoid:
            occupied |= ctx.states[name].coverage
        if p.kind == "random":  # overlap allowed, but centres stay out of the avoided layers
            allowed = ~occupied if allowed is None else allowed & ~occupied
            occupied = None
    tops = place_masks(ctx.shape, [m for m, _ in drawn], rng, overlap=p.kind == "random", allowed=allowed,
                       occupied=occupied, gap=p.gap, tries=p.tries)
    return [(m, rgb, int(tl[0]), int(tl[1]), 0) for (m, rgb), tl in zip(drawn, tops) if tl is not None]


def _inside(spec: LayerSpec, ctx: Context) -> list[tuple]:
    """One object per parent object, centred on the parent's centroid (nuclei in cells)."""
    p, rng = spec.placement, ctx.rng
    out = []
    for parent in ctx.states[p.parent].objects:
        if p.fraction < 1 and rng.random() >= p.fraction:
            continue
        mask, rgb = _draw_shapes(spec.shape, 1, rng)[0]
        cy, cx = parent.centroid()
        if p.offset > 0:
            r, phi = p.offset * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
            cy, cx = cy + r * math.sin(phi), cx + r * math.cos(phi)
        top, left = round(cy) - mask.shape[0] // 2, round(cx) - mask.shape[1] // 2
        if p.clip:  # a nucleus never pokes out of its cell
            mask = mask & _shifted(parent, top, left, mask.shape)
            if not mask.any():
                continue
        out.append((mask, rgb, top, left, parent.id))
    return out


def _shifted(rec: ObjectRecord, top: int, left: int, shape: tuple[int, int]) -> np.ndarray:
    """The parent's mask seen through a window of `shape` at (top, left)."""
    out = np.zeros(shape, bool)
    y0, x0 = max(top, rec.top), max(left, rec.left)
    y1 = min(top + shape[0], rec.top + rec.mask.shape[0])
    x1 = min(left + shape[1], rec.left + rec.mask.shape[1])
    if y1 > y0 and x1 > x0:
        out[y0 - top:y1 - top, x0 - left:x1 - left] = rec.mask[y0 - rec.top:y1 - rec.top, x0 - rec.left:x1 - rec.left]
    return out


def _grow(spec: LayerSpec, ctx: Context) -> list[tuple]:
    """Cells grown by fast marching from the parent layer's objects (touching cells split)."""
    p = spec.placement
    parents = ctx.states[p.parent].objects
    if not parents:
        return []
    seeds = np.zeros(ctx.shape, np.int32)
    for k, rec in enumerate(parents, start=1):
        canvas, patch = object_slices(ctx.shape, rec)
        seeds[canvas][rec.mask[patch]] = k
    grown, _ = fields.fmm_grow(seeds, ctx.rng, p.grow, sigma=p.sigma, spread=p.spread)
    out = []
    for k, sl in enumerate(ndimage.find_objects(grown), start=1):
        if sl is not None:
            out.append((grown[sl] == k, None, sl[0].start, sl[1].start, parents[k - 1].id))
    return out


def paint_layer(spec: LayerSpec, state: LayerState, rgbs: list[np.ndarray | None],
                ctx: Context) -> tuple[np.ndarray | None, np.ndarray]:
    """Clean colour of the layer: (None, (H, W, 3)) dense, or (flat pixel indices, (n, 3)) sparse."""
    stats = spec.colour.stats if spec.colour else _FLAT
    jitter = spec.colour.jitter if spec.colour else 0.0
    dense = spec.blur > 0 or spec.texture.kind == "lattice" or any(r is not None for r in rgbs)
    # Most layers cover a small part of the canvas: colouring only their pixels is ~5x cheaper.
    idx = None if dense or state.coverage.all() else np.flatnonzero(state.coverage)
    if state.labels is None:
        # Fills and ribbons: one cohort (+ jitter) for the whole layer in this image.
        rgb = _textured(stats, _cohort_mean(stats, ctx.rng) + _jitter(jitter, ctx.rng), ctx, idx)
    elif spec.texture.kind == "lattice":
        rgb = _lattice(spec, state, ctx)
    else:
        offsets = np.zeros((ctx.next_id, 3), np.float32)
        ids = [rec.id for rec in state.objects]
        offsets[ids] = _object_offsets(stats, jitter, len(ids), ctx.rng)
        rgb = _textured(stats, stats.mean, ctx, idx)
        rgb += offsets[state.labels] if idx is None else offsets[state.labels.ravel()[idx]]
    if dense and any(r is not None for r in rgbs):  # patch shapes bring their own (real) colours
        for rec, patch_rgb in zip(state.objects, rgbs):
            canvas, patch = object_slices(ctx.shape, rec)
            m = rec.mask[patch]
            rgb[canvas][m] = patch_rgb[patch][m]
    if spec.outline is not None and state.labels is not None:
        edge = _outline(state.labels, spec.outline.width)
        rgb[edge if idx is None else edge.ravel()[idx]] = spec.outline.colour
    np.clip(rgb, 0.0, 1.0, out=rgb)
    if spec.blur > 0:
        # Out of focus: blurring alpha alone softens the edges at a quarter of the cost of also
        # blurring the colour, which is smooth texture anyway (and painted on the whole canvas).
        state.alpha = ndimage.gaussian_filter(state.alpha, spec.blur, truncate=2.5)
        state.coverage = state.alpha > 0.01
    return idx, rgb


def _jitter(std: float, rng: np.random.Generator) -> np.ndarray:
    """Per-object mean-colour shift: mostly lightness (as stain density varies), a little hue."""
    z = rng.standard_normal(4)
    return std * (0.85 * z[0] + 0.5 * z[1:])


def _object_offsets(stats: ColourStats, jitter: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) per-object shifts from the layer mean: one cohort per object (paper: avoids heterogeneity
    artefacts) plus jitter, mostly lightness."""
    out = np.zeros((n, 3))
    if stats.cohorts is not None and len(stats.cohorts):
        out += stats.cohorts[rng.integers(0, len(stats.cohorts), n)] - stats.mean
    z = rng.standard_normal((n, 4))
    return out + jitter * (0.85 * z[:, :1] + 0.5 * z[:, 1:])


def _cohort_mean(stats: ColourStats, rng: np.random.Generator) -> np.ndarray:
    if stats.cohorts is None or not len(stats.cohorts):
        return stats.mean
    return stats.cohorts[int(rng.integers(len(stats.cohorts)))]


def _textured(stats: ColourStats, base: np.ndarray, ctx: Context, idx: np.ndarray | None) -> np.ndarray:
    """base + texture coloured by texture_cov (as B's paint), dense (H, W, 3) or at flat pixels idx."""
    lo = cholesky_psd(stats.texture_cov).astype(np.float32)
    n = (*ctx.shape, 3) if idx is None else (len(idx), 3)
    if not lo.any():
        out = np.empty(n, np.float32)
        out[...] = np.asarray(base, np.float32)
        return out
    tex, mix = ctx.texture(stats.texture_sigma, idx)
    out = tex @ (mix @ lo.T)
    out += np.asarray(base, np.float32)
    return out


def _lattice(spec: LayerSpec, state: LayerState, ctx: Context) -> np.ndarray:
    """Lattice texture: each object shows one cohort's blended patch lattice."""
    banks = spec.texture.banks
    cohort = np.zeros(ctx.next_id, np.int32)
    for rec in state.objects:
        rec.cohort = int(ctx.rng.integers(len(banks)))
        cohort[rec.id] = rec.cohort
    per_pixel = cohort[state.labels]
    rgb = np.zeros((*ctx.shape, 3), np.float32)
    for c in sorted({rec.cohort for rec in state.objects}):
        tex = lattice_texture(ctx.shape, banks[c], ctx.rng, patch=spec.texture.patch, overlap=spec.texture.overlap)
        where = state.coverage & (per_pixel == c)
        rgb[where] = tex[where]
    return rgb


def _outline(labels: np.ndarray, width: int) -> np.ndarray:
    """Bool (H, W): inner boundary pixels of every object, `width` px thick."""
    edge = np.zeros(labels.shape, bool)
    # An object pixel is on the contour when a 4-neighbour carries another label (or none).
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge &= labels > 0
    if width > 1:
        edge = ndimage.binary_dilation(edge, iterations=width - 1) & (labels > 0)
    return edge
