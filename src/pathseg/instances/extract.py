"""Instance extraction: marker-controlled watershed on the network's class probabilities."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import relabel_sequential as _relabel, watershed


@dataclass(frozen=True)
class PostProcess:
    """Thresholds of instance extraction, stored in each model's config."""

    fg_threshold: float = 0.5  # p(interior) + p(boundary) above this is nucleus
    marker_threshold: float = 0.5  # p(interior) above this seeds one nucleus per component
    min_marker_px: int = 8  # smaller seeds are noise: they would split one nucleus in two
    min_area_px: int = 20  # smaller objects are dropped (at the model's mpp)
    max_hole_px: int = 64  # holes up to this size inside nuclei are filled; larger ones (lumens) are not
    watershed: bool = True  # False: connected components of the foreground (ablation)
    # Instance-embedding models: the last `embed_dim` channels are a pixel embedding whose
    # clusters (mean-shift or HDBSCAN, see pathseg.instances.cluster) are the objects.
    embed_dim: int = 0
    cluster: str = "meanshift"
    bandwidth: float = 1.0

    def scaled(self, area_factor: float) -> "PostProcess":
        """The same thresholds for pixels `area_factor` times as large in area."""
        f = area_factor
        return replace(self, min_marker_px=max(1, round(self.min_marker_px * f)),
                       min_area_px=max(1, round(self.min_area_px * f)), max_hole_px=max(0, round(self.max_hole_px * f)))

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "PostProcess":
        """Build from a (possibly partial) dict, ignoring unknown keys."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in names})


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Renumber ids to 1..N in raster order of first appearance, keeping 0 as background."""
    return _relabel(labels)[0].astype(np.int32)


def instances_from_probs(probs: np.ndarray, pp: PostProcess | None = None) -> np.ndarray:
    """Instance map (int32, 0 = background) from class probabilities (C, H, W), C = 2 or 3.

    With ``pp.embed_dim`` = E > 0 the input is (C + E, H, W): the objects are the clusters of the
    embedding over the foreground (see :func:`pathseg.instances.cluster.cluster_embeddings`).

    With 3 classes (background, interior, boundary) each connected interior region above
    `marker_threshold` seeds one object, and the watershed on -p(interior) grows the seeds
    through the foreground; the boundary band is what keeps touching nuclei apart.
    With 2 classes, or `watershed=False`, objects are connected components of the foreground.
    """
    pp = pp or PostProcess()
    if pp.embed_dim:
        # Instance-embedding model: class probabilities first, then the pixel embedding.
        from pathseg.instances.cluster import cluster_embeddings

        emb = probs[-pp.embed_dim:]
        fg = _fill_small_holes((1.0 - probs[0]) > pp.fg_threshold, pp.max_hole_px)
        lab = cluster_embeddings(fg, emb, method=pp.cluster, bandwidth=pp.bandwidth, min_area_px=pp.min_area_px)
        return relabel_sequential(_drop_small(lab, pp.min_area_px))
    fg = _fill_small_holes((1.0 - probs[0]) > pp.fg_threshold, pp.max_hole_px)
    if probs.shape[0] < 3 or not pp.watershed:
        lab, _ = ndi.label(fg)
    else:
        interior = probs[1]
        markers_mask = (interior > pp.marker_threshold) & fg
        markers, _ = ndi.label(markers_mask)
        markers = _drop_small(markers, pp.min_marker_px)
        lab = watershed(-interior, markers=markers, mask=fg)
        # Foreground regions with no seed (small or mostly-boundary blobs) stay objects too.
        orphan, _ = ndi.label(fg & (lab == 0))
        if orphan.max():
            lab = np.where(orphan > 0, orphan + lab.max(), lab)
    return relabel_sequential(_drop_small(lab, pp.min_area_px))


def _fill_small_holes(mask: np.ndarray, max_px: int) -> np.ndarray:
    # Only small holes: a ring of touching nuclei around a gland lumen must not become one blob.
    if max_px <= 0:
        return mask
    holes, n = ndi.label(ndi.binary_fill_holes(mask) & ~mask)
    if not n:
        return mask
    small = np.bincount(holes.ravel()) <= max_px
    small[0] = False
    return mask | small[holes]


def _drop_small(lab: np.ndarray, min_px: int) -> np.ndarray:
    # One bincount instead of skimage.remove_small_objects, whose size argument changed
    # name across the scikit-image versions we support.
    if min_px <= 1 or not lab.max():
        return lab
    small = np.bincount(lab.ravel()) < min_px
    small[0] = False
    return np.where(small[lab], 0, lab)
