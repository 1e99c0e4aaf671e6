"""Instance-embedding models through the image pipeline and the slide engine: touching cells split by clustering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from pathseg.instances import PostProcess
from pathseg.models import LoadedModel, ModelConfig
from pathseg.pipeline import segment_image
from pathseg.tiling import InferenceOptions
from pathseg.wsi import SlideOptions, segment_slide
from pathseg.wsi.engine import EMBED_RANGE, dequantise, quantise

BROWN_A = (120, 70, 40)  # two TAMs of different shades: their embeddings differ by the blue channel
BROWN_B = (120, 70, 200)
PALE = (235, 230, 235)


class EmbedColourNet(nn.Module):
    """Pointwise: TAM logit from the red channel, a 2-D embedding from the blue channel (exact, tiling-proof)."""

    required_multiple = 1
    num_classes = 2
    embed_dim = 2

    def __init__(self, embed: bool = True) -> None:
        super().__init__()
        self.embed_dim = 2 if embed else 0
        self.conv = nn.Conv2d(3, 2 + self.embed_dim, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            # Input is (rgb / 255 - 0.5) / 0.25: red of brown -> -0.12, of pale -> 1.69.
            self.conv.weight[1, 0] = -4.0
            self.conv.bias[1] = 3.0
            if embed:
                self.conv.weight[2, 2] = 1.5  # blue -1.1 (A) vs +1.1 (B): 3.3 apart, bandwidth 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits then embedding."""
        return self.conv(x)


def _model(embed: bool) -> LoadedModel:
    pp = PostProcess(min_area_px=10, max_hole_px=0, watershed=False, embed_dim=2 if embed else 0, bandwidth=1.0)
    cfg = ModelConfig(arch="colour", classes=["background", "tam"], mpp=0.5, postprocess=pp.__dict__,
                      objects={"name": "TAM", "size_classes": {"threshold_um2": 100.0}})
    return LoadedModel(EmbedColourNet(embed).eval(), cfg, "embed-colour", "0" * 64, Path("x"))


def _touching_pair(h: int = 96, w: int = 128) -> np.ndarray:
    image = np.empty((h, w, 3), np.uint8)
    image[:] = PALE
    image[30:60, 20:64] = BROWN_A
    image[30:60, 64:100] = BROWN_B  # touches A along a whole side
    return image


def test_embedding_quantisation_round_trip():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1], size=(4, 5)).transpose(2, 0, 1).astype(np.float32)
    emb = rng.uniform(-EMBED_RANGE, EMBED_RANGE, (3, 4, 5)).astype(np.float32)
    stored = quantise(np.concatenate([probs, emb]), embed_dim=3)
    assert stored.shape == (4, 4, 5) and stored.dtype == np.uint8
    back = dequantise(stored, embed_dim=3)
    assert np.abs(back[2:] - emb).max() <= EMBED_RANGE / 255 + 1e-6  # half a step of 2 * range / 255
    assert np.abs(back[:2] - probs).max() <= 1 / 255 + 1e-6


def test_touching_cells_split_by_embedding_but_not_by_semantic_model():
    image = _touching_pair()
    split = segment_image(image, _model(True), mpp=0.5)
    merged = segment_image(image, _model(False), mpp=0.5)
    assert merged.labels.max() == 1  # the semantic model sees one blob
    assert split.labels.max() == 2
    a, b = split.labels[45, 40], split.labels[45, 80]
    assert a and b and a != b
    assert (split.labels == a).sum() == 30 * 44 and (split.labels == b).sum() == 30 * 36
    # Table: the brown cell has more DAB than the purple one; circularity is 4 pi A / P^2.
    t = split.table
    assert len(t["id"]) == 2 and t["mean_dab"][a - 1] > t["mean_dab"][b - 1] + 0.05
    assert np.allclose(t["circularity"], 4 * np.pi * t["area_px"] / t["perimeter_px"] ** 2)


def test_slide_engine_clusters_embeddings_across_tiles():
    image = np.empty((200, 260, 3), np.uint8)
    image[:] = PALE
    # Touching pairs that straddle the 64-px tile borders.
    for y, x in ((40, 40), (120, 150)):
        image[y : y + 30, x : x + 30] = BROWN_A
        image[y : y + 30, x + 30 : x + 60] = BROWN_B
    opts = SlideOptions(inference=InferenceOptions(window=64, halo=16, batch_size=2, device="cpu"), tile=64, margin=64,
                        tissue=False, thumbnail=256)
    res = segment_slide(image, _model(True), out=None, mpp=0.5, options=opts)
    labels = np.asarray(res.labels[:])
    assert labels.max() == 4
    areas = sorted(np.bincount(labels.ravel())[1:])
    assert areas == [900] * 4
