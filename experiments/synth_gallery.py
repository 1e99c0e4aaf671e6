"""Gallery of the built-in synthetic scenes: one PNG per scene for the docs.

Each PNG has one row per seed: noisy input u0 | clean image g_u | task mask g_m | instance
outlines on g_u. Deterministic (seeds 0..rows-1).

    python experiments/synth_gallery.py --out docs/synth
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from skimage.segmentation import find_boundaries

from pathseg.synth import generate, list_scenes, load_scene


def _u8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def scene_panel(name: str, rows: int = 2, size: int = 300) -> Image.Image:
    """One scene's gallery image: rows of u0 | g_u | g_m | instances."""
    scene = load_scene(name)
    tiles = []
    for seed in range(rows):
        s = generate(scene, seed=seed, size=(size, size))
        edges = find_boundaries(s.instances, mode="inner")
        inst = _u8(s.g_u).copy()
        inst[edges] = (255, 255, 0)
        mask = np.repeat(_u8(s.g_m)[..., None], 3, axis=2)
        gap = np.full((size, 4, 3), 255, np.uint8)
        tiles.append(np.concatenate([_u8(s.u0), gap, _u8(s.g_u), gap, mask, gap, inst], axis=1))
    sep = np.full((4, tiles[0].shape[1], 3), 255, np.uint8)
    body = np.concatenate([t if i == 0 else np.concatenate([sep, t], 0) for i, t in enumerate(tiles)], 0)
    head = Image.new("RGB", (body.shape[1], 22), "white")
    draw = ImageDraw.Draw(head)
    for i, label in enumerate(["u0 (noisy input)", "g_u (clean)", "g_m (task mask)", "instances"]):
        draw.text((i * (size + 4) + 4, 5), label, fill="black")
    canvas = Image.new("RGB", (body.shape[1], body.shape[0] + 22), "white")
    canvas.paste(head, (0, 0))
    canvas.paste(Image.fromarray(body), (0, 22))
    return canvas


def main() -> None:
    """Write <out>/<scene>.png for every built-in scene."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("docs/synth"))
    ap.add_argument("--rows", type=int, default=2)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    for name in list_scenes():
        path = a.out / f"{name}.png"
        # 256-colour palette: a quarter of the bytes in the repository, no visible change.
        scene_panel(name, a.rows).quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        print(f"written {path}")


if __name__ == "__main__":
    main()
