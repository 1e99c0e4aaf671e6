"""Variational network: explicit gradients, projections, training loop, pipeline integration."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from pathseg.errors import OutputError
from pathseg.models import ModelConfig, create_model, list_architectures, load_model, save_model
from pathseg.models._projections import project_l1_ball, project_zero_mean_l1
from pathseg.models.varnet import RBF, VarNet, VarNetSegmenter, _TableLookup, varnet_loss
from pathseg.tiling import InferenceOptions, predict_probs
from pathseg.train import VarNetTrainConfig, evaluate_synthetic, train_varnet

TINY = dict(steps=2, n_fu=4, n_fm=2, k_u=5, k_m=3, k=3, pad=2)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _fake_data(seeds, size):
    """Stand-in for pathseg.synth.generate_batch: one noisy disc per image, deterministic per seed."""
    yy, xx = np.mgrid[:size, :size]
    u0, g_u, g_m = [], [], []
    for s in seeds:
        rng = np.random.default_rng(s)
        cy, cx, r = rng.uniform(size * 0.3, size * 0.7, 2).tolist() + [rng.uniform(size * 0.15, size * 0.3)]
        m = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.float32)
        clean = np.stack([0.9 - 0.5 * m, 0.8 - 0.6 * m, 0.9 - 0.3 * m])
        g_u.append(clean)
        g_m.append(m[None])
        u0.append(np.clip(clean + rng.normal(0, 0.08, clean.shape), 0, 1))
    return {k: np.stack(v).astype(np.float32) for k, v in (("u0", u0), ("g_u", g_u), ("g_m", g_m))}


def _perturbed(net: VarNet, scale: float = 0.1, seed: int = 0) -> VarNet:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


def test_registered():
    assert {"varnet", "varnet_seg"} <= set(list_architectures())
    assert isinstance(create_model("varnet", **TINY), VarNet)


@pytest.mark.parametrize("zero_mean_u", [True, False])
def test_explicit_gradients_match_autograd(zero_mean_u):
    torch.manual_seed(0)
    net = _perturbed(VarNet(**TINY, zero_mean_u=zero_mean_u).double())
    u = torch.rand(2, 3, 11, 13, dtype=torch.float64, requires_grad=True)
    m = torch.rand(2, 1, 11, 13, dtype=torch.float64, requires_grad=True)
    u0 = torch.rand(2, 3, 11, 13, dtype=torch.float64)
    for t in range(net.steps):
        gu, gm = torch.autograd.grad(net.energy(t, u, m, u0), (u, m))
        eu, em = net.gradients(t, u, m, u0)
        torch.testing.assert_close(eu, gu, rtol=1e-6, atol=1e-12)
        torch.testing.assert_close(em, gm, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("value", [True, False])
def test_table_lookup_derivatives_are_exact(value):
    # gradcheck: the returned derivative is the true derivative of the returned value, and
    # the hand-written backward (x and table) matches finite differences, clamped ends included.
    rbf = RBF(3, kind="value").double()
    with torch.no_grad():
        rbf.weight.normal_(generator=torch.Generator().manual_seed(1))
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 0.8
    x[0, 0, 0] = torch.tensor([3.0, -3.0, 1.3037], dtype=torch.float64)  # beyond both ends, between nodes
    table = rbf.tables().detach().requires_grad_()

    def fn(a, b):
        return _TableLookup.apply(a, b, rbf.x0, rbf.step, value)

    assert torch.autograd.gradcheck(fn, (x.requires_grad_(), table), fast_mode=True)
    if value:
        v, d = fn(x, table)
        h = 1e-6
        vp, _ = fn(x + h, table)
        torch.testing.assert_close((vp - v) / h, d, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["value", "derivative"])
def test_rbf_tables_follow_closed_form(kind):
    rbf = RBF(5, kind=kind)
    with torch.no_grad():
        rbf.weight.normal_(generator=torch.Generator().manual_seed(3))
    x = torch.linspace(-1.6, 1.6, 997).view(1, 1, 997, 1).expand(1, 5, 997, 1)
    val, der = rbf(x.contiguous())
    ev, ed = rbf.exact(x[0, :, :, 0].T)
    assert (val[0, :, :, 0].T.double() - ev).abs().max() < 2e-3 * ev.abs().max()
    assert (der[0, :, :, 0].T.double() - ed).abs().max() < 2e-3 * ed.abs().max()


def test_project_l1_ball_known_cases():
    w = torch.tensor([[3.0, -1.0, 0.0], [1.0, 1.0, 0.0], [0.2, -0.3, 0.1], [0.0, 0.0, 0.0]])
    x = project_l1_ball(w, 1.0)
    torch.testing.assert_close(x[:2], torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]]))
    assert torch.equal(x[2:], w[2:])  # rows inside are unchanged, bit for bit
    w = torch.randn(50, 25, generator=torch.Generator().manual_seed(0))
    x = project_l1_ball(w, 1.5)
    assert (x.abs().sum(1) <= 1.5 + 1e-5).all()
    torch.testing.assert_close(project_l1_ball(x, 1.5), x)  # idempotent


def _brute_zero_mean_l1(w: np.ndarray, r: float) -> np.ndarray:
    # x = p - q with p, q >= 0: a smooth QP that SLSQP solves to high accuracy.
    n = len(w)
    res = minimize(lambda z: 0.5 * np.sum((z[:n] - z[n:] - w) ** 2), np.zeros(2 * n),
                   jac=lambda z: np.concatenate([z[:n] - z[n:] - w, -(z[:n] - z[n:] - w)]),
                   constraints=[{"type": "eq", "fun": lambda z: np.sum(z[:n] - z[n:])},
                                {"type": "ineq", "fun": lambda z: r - np.sum(z)}],
                   bounds=[(0, None)] * (2 * n), method="SLSQP", options={"ftol": 1e-14, "maxiter": 500})
    return res.x[:n] - res.x[n:]


def test_project_zero_mean_l1_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 9, generator=g, dtype=torch.float64) * torch.tensor([0.02, 0.1, 0.3, 1, 1, 2, 5, 0.5], dtype=torch.float64)[:, None]
    x = project_zero_mean_l1(w, 1.0)
    for i in range(len(w)):
        np.testing.assert_allclose(x[i].numpy(), _brute_zero_mean_l1(w[i].numpy(), 1.0), atol=1e-6)
    assert x.sum(1).abs().max() < 1e-12 and (x.abs().sum(1) <= 1 + 1e-12).all()
    torch.testing.assert_close(project_zero_mean_l1(x, 1.0), x)  # idempotent
    inside = torch.tensor([[0.1, -0.2, 0.1]], dtype=torch.float64)
    assert torch.equal(project_zero_mean_l1(inside), inside)


def test_project_enforces_constraints():
    net = VarNet(**TINY, zero_mean_u=True)
    with torch.no_grad():
        net.lam.copy_(torch.tensor([-0.5, 0.3]))
        for p in (net.Ku, net.Km, net.K):
            p.mul_(5).add_(0.3)
    net.project_()
    assert (net.lam >= 0).all() and float(net.lam[1].detach()) == pytest.approx(0.3)
    for p, zero_mean in ((net.Ku, True), (net.Km, True), (net.K, False)):
        rows = p.detach().flatten(1)
        assert (rows.abs().sum(1) <= 1 + 1e-5).all()
        if zero_mean:
            assert rows.sum(1).abs().max() < 1e-5


def test_forward_stays_in_unit_box():
    net = _perturbed(VarNet(**TINY), scale=2.0)
    u0 = torch.rand(2, 3, 20, 17)
    with torch.no_grad():
        us, ms = net(u0, return_all=True)
        u, m = net(u0)
    assert us.shape == (3, 2, 3, 20, 17) and ms.shape == (3, 2, 1, 20, 17)
    assert torch.equal(us[0], u0) and torch.equal(ms[0], torch.zeros_like(ms[0]))
    assert 0 <= float(us.min()) and float(us.max()) <= 1 and 0 <= float(ms.min()) and float(ms.max()) <= 1
    torch.testing.assert_close(us[-1], u)
    torch.testing.assert_close(ms[-1], m)


def test_tiny_varnet_overfits_a_batch():
    torch.manual_seed(0)
    data = {k: torch.from_numpy(v) for k, v in _fake_data([0, 1], 32).items()}
    net = VarNet(steps=3, n_fu=6, n_fm=2, k_u=5, k_m=3, k=3)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        u, m = net(data["u0"])
        loss = varnet_loss(u, m, data["g_u"], data["g_m"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        net.project_()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_segmenter_through_predict_probs_and_autocast():
    net = VarNetSegmenter(**TINY).eval()
    image = (np.random.default_rng(0).random((70, 90, 3)) * 255).astype(np.uint8)
    probs = predict_probs(net, image, [0, 0, 0], [1, 1, 1], InferenceOptions(window=48, halo=8, batch_size=2, device="cpu"))
    assert probs.shape == (2, 70, 90)
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-5)
    assert probs[1].min() >= 1e-4 - 1e-7 and probs[1].max() <= 1 - 1e-4 + 1e-7
    x = torch.from_numpy(image[:40, :40]).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        ref = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x)  # the unrolled steps must not run in bf16
        _, m = net.varnet(x)
    assert low.dtype == torch.float32 and torch.equal(ref, low)
    torch.testing.assert_close(torch.softmax(ref, 1)[:, 1:], m.clamp(1e-4, 1 - 1e-4))


def test_save_load_round_trip(tmp_path):
    net = _perturbed(VarNetSegmenter(**TINY).varnet).eval()
    seg = VarNetSegmenter(**TINY)
    seg.varnet.load_state_dict(net.state_dict())
    cfg = ModelConfig(arch="varnet_seg", arch_kwargs=seg.config, classes=["background", "mask"], mean=[0, 0, 0], std=[1, 1, 1])
    save_model(tmp_path / "m", seg, cfg)
    lm = load_model(tmp_path / "m")
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        # load_model makes the weights channels_last: another summation order, hence rtol.
        torch.testing.assert_close(torch.softmax(lm.net(x), 1), torch.softmax(seg.eval()(x), 1), rtol=1e-4, atol=1e-5)
    assert lm.config.arch == "varnet_seg" and len(lm.config.classes) == 2


def test_evaluate_synthetic_psnr_and_dice():
    def shifted(seeds, size):
        d = _fake_data(seeds, size)
        d["u0"] = d["g_u"] - 0.1  # mse 0.01 -> PSNR 20 dB exactly
        return d

    net = VarNetSegmenter(**TINY)
    r = evaluate_synthetic(net, "unused", [0, 1, 2], 24, data_fn=shifted)
    assert r["psnr_u0"] == pytest.approx(20.0, abs=1e-3)
    assert set(r) == {"psnr_u0", "psnr_uT", "mask_accuracy", "mask_dice"} and r["psnr_uT"] is not None
    assert 0 <= r["mask_accuracy"] <= 1 and 0 <= r["mask_dice"] <= 1


def _cfg(out, **kw):
    base = dict(scenario="fake", out=str(out), steps=4, batch_size=2, size=24, lr=1e-3, n_train=5, n_val=2,
                val_every=2, ckpt_every=2, steps_nt=2, threads=1, device="cpu")
    base.update(kw)
    return VarNetTrainConfig(**base)


def test_train_varnet_runs_and_resumes(tmp_path):
    seen = []

    def data_fn(seeds, size):
        seen.extend(seeds)
        return _fake_data(seeds, size)

    final = train_varnet(_cfg(tmp_path / "run"), data_fn=data_fn)
    lm = load_model(final)
    assert lm.config.arch == "varnet_seg" and lm.config.mean == [0, 0, 0] and lm.config.std == [1, 1, 1]
    assert set(lm.config.training["selected"]["val"]) == {"psnr_u0", "psnr_uT", "mask_accuracy", "mask_dice"}
    assert sorted(s for s in seen if s < 10_000_000) == [0, 1, 2, 3, 4]  # pool generated once
    assert (tmp_path / "run" / "cache" / "train_00000.npz").is_file()
    seen.clear()
    train_varnet(_cfg(tmp_path / "run", steps=6), data_fn=data_fn)  # resume: 2 more steps, cached pool
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4, 6]
    assert all(s >= 10_000_000 for s in seen)
    with pytest.raises(OutputError, match="size"):
        train_varnet(_cfg(tmp_path / "run", size=32), data_fn=data_fn)


def test_train_unet_comparison(tmp_path):
    final = train_varnet(_cfg(tmp_path / "u", arch="unet", steps=2, n_val=0), data_fn=_fake_data)
    lm = load_model(final)
    assert lm.config.arch == "unet" and lm.config.arch_kwargs["levels"] == 3
    r = evaluate_synthetic(lm.net, "unused", [7], 24, data_fn=_fake_data)
    assert r["psnr_uT"] is None and 0 <= r["mask_dice"] <= 1


def test_train_on_a_builtin_scene(tmp_path):
    pytest.importorskip("pathseg.synth")
    cfg = _cfg(tmp_path / "s", scenario="he-nuclei", steps=1, n_train=2, n_val=1, val_every=1, size=32)
    lm = load_model(train_varnet(cfg))
    assert lm.config.classes == ["background", "he-nuclei"] and lm.config.mpp == 0.25
    # he-nuclei's colours were fitted on Reinhard-normalised images: real inputs get the same mapping.
    assert lm.config.normalise["kind"] == "reinhard" and len(lm.config.normalise["target"]["mean"]) == 3
