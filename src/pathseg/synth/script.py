"""Scene scripts: YAML -> validated dataclasses; every mistake is reported with the script's line."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import yaml

from pathseg.errors import InputError
from pathseg.synth._nodes import Node, compose
from pathseg.synth.colour import (
    ColourStats,
    builtin_colours,
    load_colours,
    load_texture_bank,
)
from pathseg.synth.placement import capacity_check, work_check
from pathseg.synth.shapes import PatchBank
from pathseg.synth.spec import (
    Acquisition,
    ColourSpec,
    LayerSpec,
    MaskRule,
    OutlineSpec,
    PlacementSpec,
    RegionSpec,
    RibbonSpec,
    Scene,
    ShapeSpec,
    TextureSpec,
)

__all__ = ["Acquisition", "ColourSpec", "LayerSpec", "MaskRule", "OutlineSpec", "PlacementSpec",
           "RegionSpec", "RibbonSpec", "Scene", "ShapeSpec", "TextureSpec", "parse_scene"]

REGION_KINDS = ("voronoi", "fmm")
SHAPE_KINDS = ("ellipse", "irregular", "fmm_cell", "patches")
PLACEMENT_KINDS = ("random", "no_overlap", "inside", "grow")
TEXTURE_KINDS = ("stats", "lattice")
RULES = ("objects", "visible", "concentration")
# Keys each placement kind understands; anything else is a mistake worth reporting.
_PLACEMENT_KEYS = {
    "random": ("count", "region", "invert", "avoid", "tries"),
    "no_overlap": ("count", "region", "invert", "avoid", "tries", "gap"),
    "inside": ("parent", "fraction", "offset", "clip"),
    "grow": ("parent", "grow", "sigma", "spread"),
}
_LAYER_KEYS = ("name", "category", "fill", "ribbons", "shape", "placement", "colour", "visibility", "opacity",
               "outline", "texture", "blur")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # scene names end up in file names


def parse_scene(text: str, path: Path | None = None, script: str | None = None) -> Scene:
    """Parse and validate scene YAML text; `path` resolves relative file names."""
    script = script or (str(path) if path else "<scene>")
    base = path.parent if path else Path.cwd()
    top = compose(text, script).mapping(
        ("name", "description", "size", "mpp", "colours", "acquisition", "regions", "layers", "mask"),
        required=("name", "layers"))
    name = top["name"].string()
    if not _NAME.match(name):
        top["name"].fail(f"'{name}' is not usable in file names (letters, digits, '_', '.', '-')")
    size = (256, 256)
    if "size" in top:
        size = tuple(int(v) for v in top["size"].vector(2, 16, 8192))
        if any(v != int(v) for v in top["size"].vector(2)):
            top["size"].fail("height and width must be whole pixels")
    colours_path, colours = None, None
    if "colours" in top:
        colours_path, colours = _load_colour_file(top["colours"], base)
    acq = Acquisition()
    if "acquisition" in top:
        m = top["acquisition"].mapping(("blur", "noise"))
        acq = Acquisition(blur=m["blur"].number(0, 20) if "blur" in m else acq.blur,
                          noise=m["noise"].number(0, 1) if "noise" in m else acq.noise)
    regions: dict[str, RegionSpec] = {}
    if "regions" in top:
        for key, node in top["regions"].mapping(_any_keys(top["regions"])).items():
            regions[key] = _region(key, node)
    layer_nodes = top["layers"].seq(min_len=1)
    layers = [_layer(n, colours, base, regions) for n in layer_nodes]
    _check_layer_refs(layers, layer_nodes, size, regions)
    rules = [_rule(n, layers) for n in top["mask"].seq()] if "mask" in top else []
    return Scene(name=name, size=size, layers=tuple(layers), mask=tuple(rules), regions=regions,
                 acquisition=acq, description=top["description"].string() if "description" in top else "",
                 mpp=top["mpp"].number(0.01, 100, lo_open=True) if "mpp" in top else None,
                 colours=colours_path, path=path, text=text)


def _any_keys(node: Node) -> list[str]:
    """Every key of a mapping node whose keys are user-chosen names (regions)."""
    if not isinstance(node.node, yaml.MappingNode):
        node.fail("expected a mapping of region name -> {kind, n, k}")
    keys = [k.value for k, _ in node.node.value if isinstance(k, yaml.ScalarNode)]
    for k, _ in node.node.value:
        if not isinstance(k, yaml.ScalarNode) or not _NAME.match(str(k.value)):
            Node(node.script, k, node.path).fail(f"region names must be plain words, got {k.value!r}")
    return keys


def _load_colour_file(node: Node, base: Path) -> tuple[Path, dict[str, ColourStats]]:
    ref = node.string()
    is_name = not ref.endswith(".json") and "/" not in ref and "\\" not in ref
    try:
        path = builtin_colours(ref) if is_name else (base / ref)
    except InputError as exc:
        node.fail(str(exc))
    if not path.is_file():
        node.fail(f"colour file '{ref}' not found ({path})")
    try:
        return path, load_colours(path)
    except InputError as exc:  # B's message names the file and the key
        node.fail(str(exc))


def _region(name: str, node: Node) -> RegionSpec:
    m = node.mapping(("kind", "n", "k", "sigma", "spread", "scale"), required=("kind", "n", "k"))
    n = int(m["n"].number(1, 64, integer=True))
    k = int(m["k"].number(1, 64, integer=True))
    if k > n:
        m["k"].fail(f"k = {k} regions cannot be picked out of n = {n}")
    return RegionSpec(name=name, kind=m["kind"].string(REGION_KINDS), n=n, k=k,
                      sigma=m["sigma"].number(1, 1000) if "sigma" in m else 30.0,
                      spread=m["spread"].number(0, 5) if "spread" in m else 0.6,
                      scale=int(m["scale"].number(1, 16, integer=True)) if "scale" in m else 4)


def _region_ref(m: dict[str, Node], regions: dict[str, RegionSpec]) -> tuple[str | None, bool]:
    if "region" in m and not regions:
        m["region"].fail("no regions are defined: add a top-level 'regions:' mapping")
    region = m["region"].string(sorted(regions)) if "region" in m else None
    invert = m["invert"].boolean() if "invert" in m else False
    if invert and region is None:
        m["invert"].fail("'invert' needs a 'region'")
    return region, invert


def _layer(node: Node, colours: dict[str, ColourStats] | None, base: Path,
           regions: dict[str, RegionSpec]) -> LayerSpec:
    m = node.mapping(_LAYER_KEYS, required=("name", "category"))
    kw: dict = {"name": m["name"].string(), "category": m["category"].string(), "line": node.line}
    given = [k for k in ("fill", "ribbons", "placement") if k in m]
    if len(given) != 1:
        node.fail("a layer needs exactly one of 'fill', 'ribbons' or 'placement'"
                  + (f" (got {', '.join(given)})" if given else ""))
    if "fill" in m:
        kw["kind"] = "fill"
        f = m["fill"]
        if isinstance(f.value(), bool):
            if not f.boolean():
                f.fail("use 'fill: true' or a mapping {region: NAME, invert: BOOL}")
        else:
            kw["fill_region"], kw["fill_invert"] = _region_ref(f.mapping(("region", "invert"), ("region",)), regions)
    elif "ribbons" in m:
        kw["kind"] = "ribbons"
        r = m["ribbons"].mapping(("n_maps", "width", "region", "invert", "sigma", "spread"))
        region, invert = _region_ref(r, regions)
        kw["ribbons"] = RibbonSpec(
            n_maps=int(r["n_maps"].number(1, 8, integer=True)) if "n_maps" in r else 3,
            width=r["width"].interval(0.5, 100) if "width" in r else (3.0, 8.0), region=region, invert=invert,
            sigma=r["sigma"].number(1, 1000) if "sigma" in r else 30.0,
            spread=r["spread"].number(0, 5) if "spread" in r else 0.6)
    else:
        kw["kind"] = "objects"
        kw["placement"] = _placement(m["placement"], regions)
    if "shape" in m:
        if kw["kind"] != "objects" or kw["placement"].kind == "grow":
            m["shape"].fail("'shape' is only used with placement random, no_overlap or inside")
        kw["shape"] = _shape(m["shape"], base)
    elif kw["kind"] == "objects" and kw["placement"].kind != "grow":
        node.fail("missing required key 'shape' (placement kind needs an object outline)")
    if "colour" in m:
        kw["colour"] = _colour(m["colour"], colours)
    elif not (kw.get("shape") and kw["shape"].kind == "patches"):
        node.fail("missing required key 'colour'")
    if "visibility" in m and "opacity" in m:
        m["opacity"].fail("give either 'visibility' or 'opacity' (the same thing), not both")
    vis = m.get("visibility") or m.get("opacity")
    kw["visibility"] = vis.number(0, 1) if vis else 1.0
    if "outline" in m:
        o = m["outline"].mapping(("width", "colour"), ("colour",))
        kw["outline"] = OutlineSpec(width=int(o["width"].number(1, 10, integer=True)) if "width" in o else 1,
                                    colour=tuple(o["colour"].vector(3, 0, 1)))
    if "texture" in m:
        kw["texture"] = _texture(m["texture"], base)
        if kw["texture"].kind == "lattice" and kw["kind"] != "objects":
            m["texture"].fail("lattice textures are for object layers")
    if "blur" in m:
        kw["blur"] = m["blur"].number(0, 20)
    return LayerSpec(**kw)


def _placement(node: Node, regions: dict[str, RegionSpec]) -> PlacementSpec:
    kind_node = node.mapping(_all_placement_keys(), ("kind",))["kind"]
    kind = kind_node.string(PLACEMENT_KINDS)
    allowed = ("kind",) + _PLACEMENT_KEYS[kind]
    m = node.mapping(_all_placement_keys())
    for key, sub in m.items():
        if key not in allowed:
            sub.fail(f"not used by placement kind '{kind}' (its keys: {', '.join(allowed[1:])})")
    kw: dict = {"kind": kind}
    if kind in ("random", "no_overlap"):
        if "count" not in m:
            node.fail(f"placement kind '{kind}' needs 'count'")
        kw["count"] = tuple(int(v) for v in m["count"].interval(0, 100000, integer=True))
        kw["region"], kw["invert"] = _region_ref(m, regions)
        if "avoid" in m:
            avoid = [m["avoid"]] if not isinstance(m["avoid"].value(), list) else m["avoid"].seq()
            kw["avoid"] = tuple(a.string() for a in avoid)
        if "tries" in m:
            kw["tries"] = int(m["tries"].number(1, 10000, integer=True))
        if "gap" in m:
            kw["gap"] = int(m["gap"].number(0, 50, integer=True))
    else:
        if "parent" not in m:
            node.fail(f"placement kind '{kind}' needs 'parent' (a layer name)")
        kw["parent"] = m["parent"].string()
        for key, lo, hi in (("fraction", 0, 1), ("offset", 0, 1000), ("grow", 0.5, 200),
                            ("sigma", 0.5, 1000), ("spread", 0, 5)):
            if key in m:
                kw[key] = m[key].number(lo, hi)
        if "clip" in m:
            kw["clip"] = m["clip"].boolean()
    return PlacementSpec(**kw)


def _all_placement_keys() -> tuple[str, ...]:
    return ("kind",) + tuple(dict.fromkeys(k for keys in _PLACEMENT_KEYS.values() for k in keys))


def _shape(node: Node, base: Path) -> ShapeSpec:
    m = node.mapping(("kind", "semi_axes", "roughness", "lobes", "grow", "sigma", "spread", "pool", "bank"), ("kind",))
    kind = m["kind"].string(SHAPE_KINDS)
    used = {"ellipse": ("semi_axes", "pool"), "irregular": ("semi_axes", "roughness", "lobes", "pool"),
            "fmm_cell": ("semi_axes", "grow", "sigma", "spread", "pool"), "patches": ("bank",)}[kind]
    for key, sub in m.items():
        if key != "kind" and key not in used:
            sub.fail(f"not used by shape kind '{kind}' (its keys: {', '.join(used)})")
    kw: dict = {"kind": kind}
    if kind == "patches":
        if "bank" not in m:
            node.fail("shape kind 'patches' needs 'bank' (a .npz patch bank, see PatchBank.save)")
        path = base / m["bank"].string()
        try:
            kw["bank"] = PatchBank.load(path)
        except (InputError, OSError) as exc:
            m["bank"].fail(str(exc))
        if not kw["bank"].mask:
            m["bank"].fail(f"{path}: patch bank is empty")
        return ShapeSpec(**kw)
    if "semi_axes" not in m:
        node.fail(f"shape kind '{kind}' needs 'semi_axes' ([[a_lo, a_hi], [b_lo, b_hi]] px)")
    axes = m["semi_axes"].seq()
    if len(axes) != 2:
        m["semi_axes"].fail(f"expected two semi-axes [a, b] (each a number or [low, high]), got {len(axes)}")
    kw["semi_axes"] = tuple(a.interval(0.5, 500) for a in axes)
    for key, lo, hi in (("roughness", 0, 0.9), ("grow", 0.5, 200), ("sigma", 0.5, 1000), ("spread", 0, 5)):
        if key in m:
            kw[key] = m[key].number(lo, hi)
    if "lobes" in m:
        kw["lobes"] = int(m["lobes"].number(1, 32, integer=True))
    if "pool" in m:
        kw["pool"] = int(m["pool"].number(0, 4096, integer=True))
    return ShapeSpec(**kw)


def _colour(node: Node, colours: dict[str, ColourStats] | None) -> ColourSpec:
    m = node.mapping(("fit", "mean", "noise_cov", "noise_std", "noise_corr", "texture_cov", "texture_std",
                      "texture_corr", "texture_sigma", "cohorts", "jitter"))
    if "fit" in m:
        if colours is None:
            m["fit"].fail("no colour file to fit from: set 'colours:' at the top of the script")
        d = colours[m["fit"].string(sorted(colours))].to_dict()
    elif "mean" not in m:
        node.fail("give 'fit: CATEGORY' (from the colour file) or an inline 'mean: [r, g, b]'")
    else:
        d = {"noise_cov": np.zeros((3, 3)).tolist(), "texture_cov": np.zeros((3, 3)).tolist(),
             "texture_sigma": 2.0}
    if "mean" in m:
        d["mean"] = m["mean"].vector(3, 0, 1)
    for kind in ("noise", "texture"):
        if f"{kind}_cov" in m and f"{kind}_std" in m:
            m[f"{kind}_std"].fail(f"give either '{kind}_cov' or '{kind}_std', not both")
        if f"{kind}_cov" in m:
            d[f"{kind}_cov"] = m[f"{kind}_cov"].value()
        elif f"{kind}_std" in m:
            # Hand-set scenes: per-channel std and one channel correlation; real stain variation is
            # mostly lightness (correlated channels), independent channels would look like hue blotches.
            s = m[f"{kind}_std"]
            std = np.array(s.vector(3, 0, 1) if isinstance(s.value(), list) else [s.number(0, 1)] * 3)
            rho = m[f"{kind}_corr"].number(0, 1) if f"{kind}_corr" in m else 0.0
            d[f"{kind}_cov"] = (np.outer(std, std) * ((1 - rho) * np.eye(3) + rho)).tolist()
        if f"{kind}_corr" in m and f"{kind}_std" not in m:
            m[f"{kind}_corr"].fail(f"'{kind}_corr' goes with '{kind}_std'")
    if "texture_sigma" in m:
        d["texture_sigma"] = m["texture_sigma"].number(0.5, 200)
    if "cohorts" in m:
        d["cohorts"] = m["cohorts"].value()
    stats = ColourStats.from_dict(d, where=f"{node.script}: line {node.line}: {node.path}")
    return ColourSpec(stats=stats, jitter=m["jitter"].number(0, 1) if "jitter" in m else 0.0)


def _texture(node: Node, base: Path) -> TextureSpec:
    m = node.mapping(("kind", "bank", "patch", "overlap"), ("kind",))
    kind = m["kind"].string(TEXTURE_KINDS)
    if kind == "stats":
        for key, sub in m.items():
            if key != "kind":
                sub.fail("only used by texture kind 'lattice'")
        return TextureSpec()
    if "bank" not in m:
        node.fail("texture kind 'lattice' needs 'bank' (a .textures.npz file)")
    path = base / m["bank"].string()
    try:
        banks = tuple(load_texture_bank(path))
    except InputError as exc:  # B's message names the file and the cohort
        m["bank"].fail(str(exc))
    patch = min(b.shape[1] for b in banks)
    if "patch" in m:  # smaller than the bank's patches: random sub-squares
        patch = int(m["patch"].number(2, patch, integer=True))
    overlap = int(m["overlap"].number(0, patch // 2, integer=True)) if "overlap" in m else min(2, patch // 2)
    return TextureSpec(kind="lattice", banks=banks, patch=patch, overlap=overlap)


def _check_layer_refs(layers: list[LayerSpec], nodes: list[Node], size: tuple[int, int],
                      regions: dict[str, RegionSpec]) -> None:
    names: dict[str, int] = {}
    for i, spec in enumerate(layers):
        if spec.name in names:
            nodes[i].fail(f"layer name '{spec.name}' already used by layers[{names[spec.name]}]")
        names[spec.name] = i
    for i, spec in enumerate(layers):
        p, node = spec.placement, nodes[i]
        if p is None:
            continue
        for ref in ([p.parent] if p.parent else []) + list(p.avoid):
            if ref not in names:
                node.fail(f"placement refers to unknown layer '{ref}' (layers: {', '.join(names)})")
            if ref == spec.name:
                node.fail("placement refers to its own layer")
        if p.parent and layers[names[p.parent]].kind != "objects":
            node.fail(f"placement parent '{p.parent}' must be an object layer (shape + placement)")
    try:
        Scene(name="x", size=size, layers=tuple(layers)).generation_order()
    except InputError as exc:
        nodes[0].fail(str(exc))
    for i, spec in enumerate(layers):
        if spec.placement and spec.placement.kind in ("random", "no_overlap", "inside"):
            placement = nodes[i].mapping(_LAYER_KEYS)["placement"].mapping(_all_placement_keys())
            _work(spec, layers, names, placement["count" if "count" in placement else "parent"], size)
            if spec.placement.kind == "no_overlap":
                _capacity(spec, placement["count"], size, regions)


def _work(spec: LayerSpec, layers: list[LayerSpec], names: dict[str, int], node: Node, size: tuple[int, int]) -> None:
    """Load-time bound on drawing work, so huge counts x sizes fail now instead of seeming to hang."""
    s, p = spec.shape, spec.placement
    while p.kind in ("inside", "grow"):  # one object per parent object
        p = layers[names[p.parent]].placement
    if s.kind == "patches":
        patch_px, cost = float(max(m.size for m in s.bank.mask)), 0.0
    else:
        r = max(hi for _, hi in s.semi_axes) * (1 + (s.roughness if s.kind == "irregular" else 0))
        r += 2 * s.grow + 2 if s.kind == "fmm_cell" else 0  # fmm_cell pads by grow x max speed
        patch_px, cost = (2 * r + 1) ** 2, {"ellipse": 1.0, "irregular": 2.0}.get(s.kind, 30.0)
    try:
        work_check(spec.name, p.count[1] if p.count else 1, patch_px, float(size[0] * size[1]), cost,
                   0 if s.kind == "patches" else s.pool)
    except InputError as exc:
        node.fail(str(exc))


def _rule(node: Node, layers: list[LayerSpec]) -> MaskRule:
    m = node.mapping(("rule", "layer", "of", "radius", "threshold"), ("rule", "layer"))
    rule = m["rule"].string(RULES)
    objects = [spec.name for spec in layers if spec.kind == "objects"]
    layer = m["layer"].string(objects)
    used = ("radius", "threshold", "of") if rule == "concentration" else ()
    for key, sub in m.items():
        if key not in ("rule", "layer") + used:
            sub.fail(f"not used by rule '{rule}'")
    if rule != "concentration":
        return MaskRule(rule=rule, layer=layer)
    if "of" not in m:
        node.fail("rule 'concentration' needs 'of' (the layer whose coverage is measured)")
    return MaskRule(rule=rule, layer=layer, of=m["of"].string([spec.name for spec in layers]),
                    radius=m["radius"].number(1, 1000) if "radius" in m else 40.0,
                    threshold=m["threshold"].number(0, 1) if "threshold" in m else 0.3)


def _capacity(spec: LayerSpec, node: Node, size: tuple[int, int], regions: dict[str, RegionSpec]) -> None:
    """Load-time check that a no-overlap layer can fit its objects (expected areas)."""
    p, s = spec.placement, spec.shape
    if s.kind == "patches":
        area = float(np.mean([m.sum() for m in s.bank.mask])) + p.gap * 2 * math.sqrt(np.mean([m.sum() for m in s.bank.mask]))
    else:
        a, b = (sum(r) / 2 for r in s.semi_axes)
        extra = p.gap / 2 + (s.grow if s.kind == "fmm_cell" else 0.0)
        area = math.pi * (a + extra) * (b + extra)
    free = float(size[0] * size[1])
    if p.region is not None:
        r = regions[p.region]
        frac = (r.n - r.k) / r.n if p.invert else r.k / r.n
        free *= frac
    if free <= 0:
        node.fail(f"layer '{spec.name}': the region '{p.region}' inverted leaves no free area")
    try:
        capacity_check(spec.name, p.count[1], area, free)
    except InputError as exc:
        node.fail(str(exc))
