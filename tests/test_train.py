"""Nuclei training: patches, a short run that learns, and resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from pathseg.errors import OutputError
from pathseg.train import TrainConfig, train_nuclei
from pathseg.train.augment import AugmentConfig, augment
from pathseg.train.patches import PreparedImage, patch_grid


def _cfg(data, out, **kw):
    base = dict(data=[str(data)], out=str(out), steps=6, batch_size=2, width=4, levels=3, patch=64, stride=32,
                ckpt_every=3, val_every=3, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_patch_grid_thresholds():
    target = np.zeros((512, 512), np.uint8)
    target[:256, :256][::8, ::8] = 1  # foreground only in the top-left quarter
    item = PreparedImage("x", np.zeros((512, 512, 3), np.uint8), target, np.ones((512, 512), np.float32), 1, 1)
    corners = patch_grid(item, 256, 128)
    assert (0, 0) in corners and (256, 256) not in corners


def test_augment_keeps_image_and_target_aligned():
    rng = np.random.default_rng(0)
    img = np.zeros((64, 64, 3), np.uint8)
    tgt = np.zeros((64, 64), np.uint8)
    img[10:20, 30:40] = 255
    tgt[10:20, 30:40] = 1
    for _ in range(5):
        a, t, w = augment(img, tgt, np.ones((64, 64), np.float32), rng, AugmentConfig(elastic_p=1.0, stain_p=0.0))
        assert a.shape == (64, 64, 3) and t.shape == (64, 64)
        bright = a[..., 0] > 127
        assert (bright == (t == 1)).mean() > 0.97


def test_resume_matches_uninterrupted(synthetic_dataset, tmp_path):
    kw = dict(val=str(synthetic_dataset), ckpt_every=4, val_every=3)
    full = tmp_path / "full"
    train_nuclei(_cfg(synthetic_dataset, full, **kw))
    log = [json.loads(line) for line in (full / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [3, 4, 6]
    assert (full / "model" / "model.safetensors").is_file()

    # Stop after 3 steps (not a checkpoint step), then resume to 6: same weights, same
    # validations, same selected model as the uninterrupted run.
    part = tmp_path / "part"
    train_nuclei(_cfg(synthetic_dataset, part, steps=3, **kw))
    train_nuclei(_cfg(synthetic_dataset, part, steps=6, **kw))
    for sub in ("checkpoint", "model"):
        a = load_file(str(full / sub / "model.safetensors"))
        b = load_file(str(part / sub / "model.safetensors"))
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6, err_msg=f"{sub}/{k}")
    vals = lambda run: [r["val"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "val" in r]  # noqa: E731
    assert [v["dice"] for v in vals(full)] == pytest.approx([v["dice"] for v in vals(part)], abs=1e-6)
    assert not (part / "checkpoint.tmp").exists() and not (part / "checkpoint.old").exists()


def test_failed_start_does_not_bind_the_folder(tmp_path, synthetic_dataset):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(Exception):
        train_nuclei(_cfg(tmp_path / "empty", tmp_path / "r"))
    train_nuclei(_cfg(synthetic_dataset, tmp_path / "r", steps=1, ckpt_every=1))  # a corrected retry works


def test_resume_refuses_other_settings(synthetic_dataset, tmp_path):
    train_nuclei(_cfg(synthetic_dataset, tmp_path / "r", steps=1, ckpt_every=1))
    with pytest.raises(OutputError, match="other settings"):
        train_nuclei(_cfg(synthetic_dataset, tmp_path / "r", steps=1, ckpt_every=1, loss="ce"))


@pytest.mark.slow
def test_training_reduces_loss(synthetic_dataset, tmp_path):
    # Plain CE: the synthetic labels are complete, and it learns fastest there.
    cfg = _cfg(synthetic_dataset, tmp_path / "l", steps=80, ckpt_every=20, val_every=80, width=8,
               val=str(synthetic_dataset), loss="ce")
    train_nuclei(cfg)
    log = [json.loads(line) for line in (tmp_path / "l" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < 0.8 * log[0]["loss"]
    assert log[-1]["val"]["dice"] > 0.7
