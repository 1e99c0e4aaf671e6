"""TAM data, augmentation, training runs and the experiment runner, on tiny synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pathseg.errors import InputError, OutputError
from pathseg.train.tam import TamTrainConfig, _plateau, train_tam
from pathseg.train.tam_augment import TamAugmentConfig, colour_augment, sample_patch
from pathseg.train.tam_data import group_split, macrophage_labels, read_groups, write_synthetic_tam
from pathseg.train.tam_experiment import format_table, parse_list, run_experiment


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def test_macrophage_labels_merge_nucleus_drop_other_cells_and_absorb_slivers():
    inst = np.zeros((40, 40), np.int32)
    inst[5:25, 5:25] = 1  # macrophage
    inst[10:14, 10:14] = 2  # its nucleus, drawn on top
    inst[30:36, 30:36] = 3  # a hepatocyte nucleus
    inst[5:25, 25:27] = 4  # a 40-px sliver of TAM 4 beside TAM 1 ...
    inst[30:36, 2:12] = 4  # ... whose main piece (60 px) lies elsewhere
    inst[0:2, 30:40] = 5  # a small TAM (20 px) touching nothing
    table = [
        {"id": 1, "category": "macrophage", "parent": None},
        {"id": 2, "category": "macrophage_nucleus", "parent": 1},
        {"id": 3, "category": "hepatocyte_nucleus", "parent": None},
        {"id": 4, "category": "macrophage", "parent": None},
        {"id": 5, "category": "macrophage", "parent": None},
    ]
    out = macrophage_labels(inst, table, min_fragment_px=50)
    # The nucleus joins its TAM, the hepatocyte is gone, TAM 4's sliver joins TAM 1 (which it
    # touches), TAM 4's main piece and the small isolated TAM 5 stay TAMs.
    assert set(np.unique(out)) == {0, 1, 2, 3}
    assert (out == out[15, 15]).sum() == 20 * 20 + 40
    assert (out == out[33, 5]).sum() == 60 and (out == out[1, 35]).sum() == 20
    assert out[33, 33] == 0 and len({out[15, 15], out[33, 5], out[1, 35]}) == 3


def test_group_split_keeps_groups_together_and_is_deterministic():
    names = [f"img{i:02d}" for i in range(40)]
    groups = {n: f"patient{i // 4}" for i, n in enumerate(names)}  # 10 patients, 4 images each
    a = group_split(names, groups, seed=3)
    assert a == group_split(names, groups, seed=3)
    assert sorted(a["train"] + a["val"] + a["test"]) == names
    for split in a.values():
        assert all(groups[n] not in {groups[m] for s2 in a.values() if s2 is not split for m in s2} for n in split)
    assert 20 <= len(a["train"]) <= 32 and a["val"] and a["test"]


def test_read_groups_reports_the_bad_line(tmp_path):
    p = tmp_path / "groups.csv"
    p.write_text("image,group\na.png,p1\nb.png\n")
    with pytest.raises(InputError, match=r"groups.csv:3"):
        read_groups(p)


def test_sample_patch_identity_and_constant_labels_beyond_the_border():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (50, 60, 3), dtype=np.uint8)
    lab = np.arange(50 * 60, dtype=np.int32).reshape(50, 60)
    off = TamAugmentConfig(enabled=False)
    got_img, got_lab = sample_patch([img, lab], [1, 0], (24.5, 29.5), 20, rng, off, constant=(False, True))
    np.testing.assert_array_equal(got_img, img[15:35, 20:40])
    np.testing.assert_array_equal(got_lab, lab[15:35, 20:40])
    # At a corner, the mirrored image continues but the instance map reads 0 outside.
    _, corner = sample_patch([img, lab], [1, 0], (0.0, 0.0), 20, rng, off, constant=(False, True))
    assert (corner[:9, :] == 0).all() and (corner[10:, 10:] > 0).all()


def test_augmentation_moves_image_and_labels_together():
    rng = np.random.default_rng(1)
    img = np.full((80, 80, 3), 230, np.uint8)
    lab = np.zeros((80, 80), np.int32)
    img[30:50, 30:50] = (120, 70, 40)
    lab[30:50, 30:50] = 7
    cfg = TamAugmentConfig(elastic_p=1.0)
    for _ in range(5):
        a, b = sample_patch([img, lab], [1, 0], (40.0, 40.0), 64, rng, cfg, constant=(False, True))
        brown = a[..., 2] < 100
        assert set(np.unique(b)) <= {0, 7}
        # Where the label says TAM the image is brown (up to interpolated edges).
        assert (brown == (b == 7)).mean() > 0.97
    out = colour_augment(img, rng, TamAugmentConfig())
    assert out.dtype == np.uint8 and out.shape == img.shape and not np.array_equal(out, img)


def test_plateau_halves_lr_after_patience_blocks():
    cfg = TamTrainConfig(data="x", out="y", lr=1e-3, plateau_patience=3, plateau_block=2)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    state = {"block": [], "plateau_best": None, "stall": 0}
    for loss in [1.0, 1.0, 0.5, 0.5]:  # two blocks, improving
        _plateau(state, opt, loss, cfg)
    assert opt.param_groups[0]["lr"] == 1e-3
    for _ in range(3 * 2):  # three flat blocks
        _plateau(state, opt, 0.6, cfg)
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tam")
    return write_synthetic_tam(root / "data", counts={"train": 3, "val": 1, "test": 2}, size=48, upscale=2)


def test_synthetic_dataset_resumes_and_refuses_other_settings(tiny_data):
    meta = json.loads((tiny_data / "dataset.json").read_text())
    assert meta["mpp"] == 0.25 and meta["scene"] == "cd163-tam-clusters"
    assert len(list((tiny_data / "train" / "images").iterdir())) == 3
    before = (tiny_data / "test" / "labels" / "test_0000.png").read_bytes()
    write_synthetic_tam(tiny_data, counts={"train": 3, "val": 1, "test": 2}, size=48, upscale=2)  # resume: no-op
    assert (tiny_data / "test" / "labels" / "test_0000.png").read_bytes() == before
    with pytest.raises(OutputError, match="other settings"):
        write_synthetic_tam(tiny_data, counts={"train": 3, "val": 1, "test": 2}, size=64, upscale=2)


@pytest.mark.parametrize("arch,strategy", [("unet", "weights"), ("segnet", "baseline"), ("deeplabv3", "instance")])
def test_training_runs_write_a_usable_model(tiny_data, tmp_path, arch, strategy):
    cfg = TamTrainConfig(data=str(tiny_data), out=str(tmp_path / "run"), arch=arch, strategy=strategy, patch=64,
                         steps=3, val_every=3, batch_size=2, embed_dim=4, lr=1e-3)
    final = train_tam(cfg)
    conf = json.loads((final / "config.json").read_text())
    assert conf["arch"] == arch and conf["objects"]["name"] == "TAM"
    assert conf["postprocess"]["embed_dim"] == (4 if strategy == "instance" else 0)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 3 and {"loss", "iou", "sbd"} <= set(log[-1]["val"])
    # Same folder, other strategy: refused rather than mixed.
    other = "baseline" if strategy != "baseline" else "weights"
    with pytest.raises(OutputError, match="other settings"):
        train_tam(TamTrainConfig(**{**cfg.to_dict(), "strategy": other}))


def test_experiment_writes_table_json_and_figure(tiny_data, tmp_path):
    res = run_experiment(tiny_data, tmp_path / "exp", ["unet"], ["baseline", "instance"],
                         {"patch": 64, "steps": 2, "val_every": 2, "batch_size": 2, "embed_dim": 4})
    assert [(r["model"], r["strategy"]) for r in res["rows"]] == [("unet", "baseline"), ("unet", "instance")]
    table = (tmp_path / "exp" / "tam_table.md").read_text()
    assert table.count("\n") == 4 and "| UNet | instance |" in table
    data = json.loads((tmp_path / "exp" / "tam_table.json").read_text())
    assert data["n_test"] == 2 and len(data["rows"][0]["sbd_per_image"]) == 2
    assert (tmp_path / "exp" / "tam_figure.png").stat().st_size > 1000


def test_format_table_and_name_parsing():
    rows = [{"model": "deeplabv3", "strategy": "instance", "iou_mean": 0.8913, "iou_std": 0.0385, "sbd_mean": 0.79,
             "sbd_std": 0.0372}]
    assert "| DeepLab-v3 | instance | 89.13 | 3.85 | 79.00 | 3.72 |" in format_table(rows)
    from pathseg.train.tam_experiment import ALIASES

    assert parse_list("deeplab,UNet,unet", ALIASES, "models") == ["deeplabv3", "unet"]
    with pytest.raises(InputError, match="unknown segnett"):
        parse_list("segnett", ALIASES, "models")
