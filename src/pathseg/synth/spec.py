"""Scene data model: the validated, immutable form of a scene script (built by script.parse_scene)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pathseg.errors import InputError
from pathseg.synth.colour import ColourStats
from pathseg.synth.shapes import PatchBank

__all__ = ["Acquisition", "ColourSpec", "LayerSpec", "MaskRule", "OutlineSpec", "PlacementSpec",
           "RegionSpec", "RibbonSpec", "Scene", "ShapeSpec", "TextureSpec"]


@dataclass(frozen=True)
class RegionSpec:
    """k of n random regions (Voronoi or fast-marching) -> one bool mask per sample."""
    name: str
    kind: str
    n: int
    k: int
    sigma: float = 30.0
    spread: float = 0.6
    scale: int = 4                 # fmm only: fast marching runs at 1/scale resolution


@dataclass(frozen=True)
class ShapeSpec:
    """Object outline: semi-axes ranges (px) and kind-specific parameters."""
    kind: str
    semi_axes: tuple[tuple[float, float], tuple[float, float]] = ((5.0, 5.0), (5.0, 5.0))
    roughness: float = 0.25
    lobes: int = 6
    grow: float = 4.0
    sigma: float = 6.0
    spread: float = 0.5
    pool: int = 256               # outlines drawn from a fixed per-spec pool (0 = a fresh one each time)
    bank: PatchBank | None = None


@dataclass(frozen=True)
class PlacementSpec:
    """Where objects go: random / no_overlap (count, region), inside or grown from a parent layer."""
    kind: str
    count: tuple[int, int] = (0, 0)
    region: str | None = None
    invert: bool = False
    avoid: tuple[str, ...] = ()
    tries: int = 200
    gap: int = 0
    parent: str | None = None
    fraction: float = 1.0
    offset: float = 0.0
    clip: bool = True
    grow: float = 6.0
    sigma: float = 6.0
    spread: float = 0.5


@dataclass(frozen=True)
class RibbonSpec:
    """Connective-tissue ribbons along the border of a region (paper: preimages of FMM intervals)."""
    n_maps: int = 3
    width: tuple[float, float] = (3.0, 8.0)
    region: str | None = None
    invert: bool = False
    sigma: float = 30.0
    spread: float = 0.6


@dataclass(frozen=True)
class ColourSpec:
    """Colour statistics of a layer plus the per-object mean jitter (std, RGB units)."""
    stats: ColourStats
    jitter: float = 0.0


@dataclass(frozen=True)
class TextureSpec:
    """'stats' (smooth Gaussian texture) or 'lattice' (blended real patches, one cohort per object)."""
    kind: str = "stats"
    banks: tuple[np.ndarray, ...] = ()
    patch: int = 8
    overlap: int = 2


@dataclass(frozen=True)
class OutlineSpec:
    """Object contour of `width` px drawn in `colour`."""
    width: int
    colour: tuple[float, float, float]


@dataclass(frozen=True)
class LayerSpec:
    """One layer = one category: a fill, ribbons, or objects (shape + placement)."""
    name: str
    category: str
    kind: str                      # "fill" | "ribbons" | "objects"
    line: int
    colour: ColourSpec | None = None
    fill_region: str | None = None
    fill_invert: bool = False
    ribbons: RibbonSpec | None = None
    shape: ShapeSpec | None = None
    placement: PlacementSpec | None = None
    visibility: float = 1.0
    outline: OutlineSpec | None = None
    texture: TextureSpec = field(default_factory=TextureSpec)
    blur: float = 0.0


@dataclass(frozen=True)
class MaskRule:
    """One ground-truth rule; the mask is the union of all rules."""
    rule: str
    layer: str
    of: str | None = None
    radius: float = 40.0
    threshold: float = 0.3


@dataclass(frozen=True)
class Acquisition:
    """u0 = gaussian_blur(composite + colour noise, blur) + N(0, noise^2)."""
    blur: float = 0.6
    noise: float = 0.02


@dataclass(frozen=True)
class Scene:
    """A parsed, validated scene script."""
    name: str
    size: tuple[int, int]
    layers: tuple[LayerSpec, ...]
    mask: tuple[MaskRule, ...] = ()
    regions: dict[str, RegionSpec] = field(default_factory=dict)
    acquisition: Acquisition = field(default_factory=Acquisition)
    description: str = ""
    mpp: float | None = None
    colours: Path | None = None
    path: Path | None = None
    text: str = ""

    def layer(self, name: str) -> LayerSpec:
        """The layer called `name`."""
        return next(spec for spec in self.layers if spec.name == name)

    def generation_order(self) -> list[int]:
        """Layer indices with parents/avoided layers before the layers that use them."""
        index = {spec.name: i for i, spec in enumerate(self.layers)}
        done: list[int] = []
        for i in range(len(self.layers)):
            _visit(i, self.layers, index, done, [])
        return done


def _deps(spec: LayerSpec) -> list[str]:
    p = spec.placement
    return ([p.parent] if p and p.parent else []) + (list(p.avoid) if p else [])


def _visit(i: int, layers, index: dict[str, int], done: list[int], stack: list[int]) -> None:
    if i in done:
        return
    if i in stack:  # the parser reports cycles, so this only guards hand-built Scenes
        raise InputError(f"layer '{layers[i].name}': placement depends on itself (cycle)")
    for dep in _deps(layers[i]):
        _visit(index[dep], layers, index, done, stack + [i])
    done.append(i)
