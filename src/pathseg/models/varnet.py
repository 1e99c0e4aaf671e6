"""Coupled variational network for joint denoising and segmentation (Effland et al. 2019).

N_t projected gradient steps on a learned, step-dependent energy

    E_t(u, m) = sum phi_t(K_t(phi^u_t(K^u_t u), phi^m_t(K^m_t m))) + lambda_t / 2 ||u - u0||^2

with the paper's explicit gradients (convolutions and their exact adjoints). Training
backpropagates through the unrolled steps. See docs of `VarNet` for the parameterisation.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from pathseg.models._projections import project_l1_ball, project_zero_mean_l1
from pathseg.models._registry import register_model


class RBF(nn.Module):
    """Per-channel scalar functions built from N_w Gaussian RBFs equally spaced on [vmin, vmax].

    kind="value": the weights parameterise the function, phi(x) = sum_j w_j g_j(x) (the
    paper's phi^u, phi^m). kind="derivative": they parameterise its derivative,
    phi'(x) = sum_j w_j g_j(x) and phi(x) = sum_j w_j G_j(x) with the erf integral G_j
    (the paper's phi_t). g_j(x) = exp(-(x - mu_j)^2 / (2 sigma^2)), sigma = spacing.
    Weights have shape (C, N_w), or (steps, C, N_w) with `steps` (one function per step).

    Evaluating 31 Gaussians per feature value costs ~150 full passes over the feature maps
    in eager PyTorch, which dominated training time. So the network evaluates each
    function through a fine table (TABLE_RES nodes per RBF spacing, +-6 sigma margin): the
    derivative is the linear interpolation of the exact derivative at the nodes and the
    value is its exact integral (piecewise quadratic). Value, derivative and second
    derivative are then mutually exact, which keeps the explicit gradients identical to
    autograd of the energy, and they differ from the closed form (`exact`) by ~1e-3
    relative. Outside the table the derivative is 0 (the Gaussians have decayed to ~1e-8).
    """

    TABLE_RES = 16
    MARGIN = 6.0  # sigmas beyond [vmin, vmax] covered by the table

    def __init__(self, channels: int, n_w: int = 31, vmin: float = -1.2, vmax: float = 1.2, kind: str = "value",
                 steps: int = 0) -> None:
        super().__init__()
        if kind not in ("value", "derivative"):
            raise ValueError(f"kind must be 'value' or 'derivative', got {kind!r}")
        self.kind = kind
        self.sigma = (vmax - vmin) / (n_w - 1)
        self.weight = nn.Parameter(torch.zeros(*((steps,) if steps else ()), channels, n_w))
        mu = torch.linspace(vmin, vmax, n_w, dtype=torch.float64)
        self.register_buffer("mu", mu.float(), persistent=False)
        self.step = self.sigma / self.TABLE_RES
        self.x0 = vmin - self.MARGIN * self.sigma
        n_nodes = round((vmax - vmin + 2 * self.MARGIN * self.sigma) / self.step) + 1
        nodes = self.x0 + self.step * torch.arange(n_nodes, dtype=torch.float64)
        # Bases at the nodes, computed in float64: derivative (G, N_w), value at node 0 (1, N_w).
        self.register_buffer("basis_d", self._basis(nodes, mu, True).float(), persistent=False)
        self.register_buffer("basis_v0", self._basis(nodes[:1], mu, False).float(), persistent=False)

    def _basis(self, x: torch.Tensor, mu: torch.Tensor, derivative: bool) -> torch.Tensor:
        d = (x[..., None] - mu) / self.sigma
        g = torch.exp(-0.5 * d * d)
        if self.kind == "value":
            return -d / self.sigma * g if derivative else g
        if derivative:
            return g
        return self.sigma * math.sqrt(math.pi / 2) * (torch.erf(d / math.sqrt(2)) + 1)

    def _w(self, t: int | None) -> torch.Tensor:
        return self.weight if t is None else self.weight[t]

    def exact(self, x: torch.Tensor, t: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Closed-form (value, derivative) in float64 for x of shape (..., C): the tables' reference."""
        w, mu = self._w(t).double(), self.mu.double()
        xd = x.double()
        return (self._basis(xd, mu, False) * w).sum(-1), (self._basis(xd, mu, True) * w).sum(-1)

    def tables(self, t: int | None = None) -> torch.Tensor:
        """(..., 3, C, G) tables: value at each node, derivative at each node, slope to the next."""
        w = self._w(t)
        d = w @ self.basis_d.T  # (..., C, G)
        # Zero derivative on the two end nodes at each side (the Gaussians are ~1e-8 there):
        # then value, derivative and slope are constant/zero wherever _TableLookup clamps,
        # so its derivative formulas hold beyond the table too, without a mask.
        zero = torch.zeros_like(d[..., :2])
        d = torch.cat([zero, d[..., 2:-2], zero], -1)
        slope = torch.cat([d[..., 1:] - d[..., :-1], zero[..., :1]], -1)
        v0 = w @ self.basis_v0.T  # (..., C, 1)
        v = torch.cat([v0, v0 + (0.5 * self.step * (d[..., 1:] + d[..., :-1])).cumsum(-1)], -1)
        return torch.stack([v, d, slope], -3)

    def forward(self, x: torch.Tensor, t: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(phi(x), phi'(x)) for feature maps x (N, C, H, W), from the tables."""
        val, der = _lookup(x, self.tables(t), self.x0, self.step, True)
        assert val is not None
        return val, der


class _TableLookup(torch.autograd.Function):
    """(phi(x), phi'(x)) from (3, C, G) tables [value, derivative, slope to next node].

    A hand-written backward: the autograd graph of the same few lines was ~2x slower
    (gathers through `take` and their scatter-backward per table column).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, table: torch.Tensor, x0: float, step: float, value: bool):  # type: ignore[override]
        _, c, g = table.shape
        s = torch.sub(x, x0).mul_(1.0 / step).clamp_(0, g - 1)
        i = s.to(torch.int32).clamp_(max=g - 2)  # truncation == floor here, as s >= 0
        f = s.sub_(i)
        # One row index per element: channel offset + node (x is (..., C), channels last).
        index = i.add_(torch.arange(0, c * g, g, dtype=torch.int32, device=x.device)).reshape(-1)
        # Column by column: 1-D index_select is the fastest gather on CPU and gives
        # contiguous results (strided views slow every later elementwise op ~2x).
        cols = table.reshape(3, -1)
        d0 = cols[1].index_select(0, index).view(x.shape)
        sl = cols[2].index_select(0, index).view(x.shape)
        deriv = torch.addcmul(d0, f, sl)
        ctx.save_for_backward(index, f, sl, deriv)
        ctx.meta = (step, value, (c, g))
        if not value:
            return deriv
        v = cols[0].index_select(0, index).view(x.shape)
        return torch.addcmul(d0, f, sl, value=0.5).mul_(f).mul_(step).add_(v), deriv

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: torch.Tensor):  # type: ignore[override]
        index, f, sl, deriv = ctx.saved_tensors
        step, value, (c, g) = ctx.meta
        gv, gd = grads if value else (None, grads[0])
        gx = gt = None
        if ctx.needs_input_grad[0]:
            # d val/dx = deriv, d deriv/dx = slope / step (0 where clamped: see RBF.tables).
            gx = torch.mul(gd, sl).mul_(1.0 / step)
            if gv is not None:
                gx.addcmul_(gv, deriv)
        if ctx.needs_input_grad[1]:
            # val = v + step (f d + f^2/2 s), deriv = d + f s  ->  scatter into the three columns.
            if gv is not None:
                gvf = gv * f
                cols = (gv, torch.add(gd, gvf, alpha=step), torch.add(gd, gvf, alpha=0.5 * step).mul_(f))
            else:
                cols = (None, gd, gd * f)
            out = torch.zeros(3, c * g, dtype=f.dtype, device=f.device)
            for k, col in enumerate(cols):
                if col is not None:  # 1-D index_add_ is the fast path on CPU (2-D is ~50x slower)
                    out[k].index_add_(0, index, col.reshape(-1))
            gt = out.view(3, c, g)
        return gx, gt, None, None, None


def _lookup(x: torch.Tensor, table: torch.Tensor, x0: float, step: float, value: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(phi(x) or None, phi'(x)) of feature maps x (N, C, H, W) from one step's tables (3, C, G)."""
    # Work channels-last (N, H, W, C): a view without copy for channels_last x, and the
    # results come back channels_last, the layout the convolutions want.
    out = _TableLookup.apply(x.permute(0, 2, 3, 1), table, x0, step, value)
    if value:
        return out[0].permute(0, 3, 1, 2), out[1].permute(0, 3, 1, 2)
    return None, out.permute(0, 3, 1, 2)


def _normalise_rows(k: torch.Tensor, zero_mean: bool) -> torch.Tensor:
    # One row per output kernel (all input channels), as in the constraint set.
    rows = k.reshape(k.shape[0], -1)
    if zero_mean:
        rows = rows - rows.mean(1, keepdim=True)
    return (rows / rows.abs().sum(1, keepdim=True).clamp(min=1e-12)).reshape(k.shape)


def _identity_weights(rbf: RBF, slope: float) -> torch.Tensor:
    """RBF weights with sum_j w_j g_j(x) ~ slope * x on [vmin, vmax] (ridge least squares).

    For kind="value" that is phi(x) ~ slope x, for kind="derivative" phi'(x) ~ slope x.
    """
    mu = rbf.mu.double()
    x = torch.linspace(float(mu[0]), float(mu[-1]), 256, dtype=torch.float64)
    b = torch.exp(-0.5 * ((x[:, None] - mu) / rbf.sigma) ** 2)
    a = b.T @ b + 1e-3 * torch.eye(len(mu), dtype=torch.float64)
    return torch.linalg.solve(a, b.T @ (slope * x)).float()


@register_model("varnet")
class VarNet(nn.Module):
    """The paper's coupled variational network: (u0, m0) -> (u_T, m_T), both in [0, 1].

    Parameters are stacked over the steps T: Ku (T * n_fu, C, k_u, k_u), Km (T * n_fm, 1,
    k_m, k_m), K (T * n_f, n_f, k, k), RBF weights phi_u.weight (T, n_fu, N_w), phi_m.weight
    (T, n_fm, N_w), phi.weight (T, n_f, N_w) and lam (T,). Convolutions use zero 'same'
    padding and conv_transpose2d as their exact adjoint; the images are reflect-padded by
    `pad` px once at the start and cropped at the end (fewer border artefacts, exact adjoints).
    """

    def __init__(self, in_channels: int = 3, steps: int = 10, n_fu: int = 20, k_u: int = 11, n_fm: int = 4,
                 k_m: int = 5, k: int = 5, n_w: int = 31, vmin: float = -1.2, vmax: float = 1.2,
                 zero_mean_u: bool = True, pad: int = 8, init_lambda: float = 0.1) -> None:
        super().__init__()
        for name, size in (("k_u", k_u), ("k_m", k_m), ("k", k)):
            if size < 1 or size % 2 == 0:
                raise ValueError(f"{name} must be odd (same-size convolutions), got {size}")
        self.config = {"in_channels": in_channels, "steps": steps, "n_fu": n_fu, "k_u": k_u, "n_fm": n_fm, "k_m": k_m,
                       "k": k, "n_w": n_w, "vmin": vmin, "vmax": vmax, "zero_mean_u": zero_mean_u, "pad": pad,
                       "init_lambda": init_lambda}
        self.steps, self.n_fu, self.n_fm, self.pad, self.zero_mean_u = steps, n_fu, n_fm, pad, zero_mean_u
        n_f = n_fu + n_fm
        self.phi_u = RBF(n_fu, n_w, vmin, vmax, "value", steps)
        self.phi_m = RBF(n_fm, n_w, vmin, vmax, "value", steps)
        self.phi = RBF(n_f, n_w, vmin, vmax, "derivative", steps)
        g = torch.Generator().manual_seed(0)
        # Kernels of all steps stacked along the output dim, 4-D like any conv weight (so
        # Module.to(memory_format=channels_last), as load_model does, applies): step t owns
        # rows t*n .. (t+1)*n - 1, see _kernels.
        self.Ku = nn.Parameter(_normalise_rows(torch.randn(steps * n_fu, in_channels, k_u, k_u, generator=g), zero_mean_u))
        self.Km = nn.Parameter(_normalise_rows(torch.randn(steps * n_fm, 1, k_m, k_m, generator=g), True))
        # K starts near the identity (each feature keeps itself) plus a random mix that
        # couples image and mask features from the first step on.
        eye = torch.zeros(n_f, n_f, k, k)
        eye[torch.arange(n_f), torch.arange(n_f), k // 2, k // 2] = 1.0
        mix = _normalise_rows(torch.randn(steps * n_f, n_f, k, k, generator=g), False)
        self.K = nn.Parameter(0.5 * eye.repeat(steps, 1, 1, 1) + 0.5 * mix)
        # phi^u, phi^m start as the identity and phi' as 0.1 x: a quadratic (diffusion) energy.
        with torch.no_grad():
            self.phi_u.weight.copy_(_identity_weights(self.phi_u, 1.0))
            self.phi_m.weight.copy_(_identity_weights(self.phi_m, 1.0))
            self.phi.weight.copy_(_identity_weights(self.phi, 0.1))
        self.lam = nn.Parameter(torch.full((steps,), float(init_lambda)))
        self.project_()

    def _kernels(self, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step t's (K^u_t, K^m_t, K_t) as conv weights."""
        n_f = self.n_fu + self.n_fm
        return (self.Ku[t * self.n_fu : (t + 1) * self.n_fu], self.Km[t * self.n_fm : (t + 1) * self.n_fm],
                self.K[t * n_f : (t + 1) * n_f])

    def _tables(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # All steps at once: one small matmul per function family per forward pass.
        return self.phi_u.tables(), self.phi_m.tables(), self.phi.tables()

    def _look(self, rbf: RBF, x: torch.Tensor, table: torch.Tensor, value: bool):
        return _lookup(x, table, rbf.x0, rbf.step, value)

    def energy(self, t: int, u: torch.Tensor, m: torch.Tensor, u0: torch.Tensor) -> torch.Tensor:
        """E_t(u, m) of the paper, summed over the batch."""
        tu, tm, tp = self._tables()
        ku, km, kk = self._kernels(t)
        fu, _ = self._look(self.phi_u, F.conv2d(u, ku, padding=ku.shape[-1] // 2), tu[t], True)
        fm, _ = self._look(self.phi_m, F.conv2d(m, km, padding=km.shape[-1] // 2), tm[t], True)
        z = F.conv2d(torch.cat([fu, fm], 1), kk, padding=kk.shape[-1] // 2)
        reg, _ = self._look(self.phi, z, tp[t], True)
        return reg.sum() + 0.5 * self.lam[t] * ((u - u0) ** 2).sum()

    def gradients(self, t: int, u: torch.Tensor, m: torch.Tensor, u0: torch.Tensor,
                  tables: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(grad_u E_t, grad_m E_t) by the paper's explicit formulas (convolution adjoints)."""
        tu, tm, tp = tables if tables is not None else self._tables()
        ku, km, kk = self._kernels(t)
        au = F.conv2d(u, ku, padding=ku.shape[-1] // 2)
        am = F.conv2d(m, km, padding=km.shape[-1] // 2)
        fu, du = self._look(self.phi_u, au, tu[t], True)
        fm, dm = self._look(self.phi_m, am, tm[t], True)
        z = F.conv2d(torch.cat([fu, fm], 1), kk, padding=kk.shape[-1] // 2)
        _, dz = self._look(self.phi, z, tp[t], False)
        back = F.conv_transpose2d(dz, kk, padding=kk.shape[-1] // 2)  # K^T Dphi(z)
        gu = F.conv_transpose2d(du * back[:, : self.n_fu], ku, padding=ku.shape[-1] // 2)
        gm = F.conv_transpose2d(dm * back[:, self.n_fu :], km, padding=km.shape[-1] // 2)
        return gu + self.lam[t] * (u - u0), gm

    def forward(self, u0: torch.Tensor, m0: torch.Tensor | None = None, return_all: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(u_T, m_T) after `steps` projected gradient steps from (u0, m0 or zeros).

        u0 (N, C, H, W) in [0, 1]. With return_all, the tensors are stacked over all
        iterates (steps + 1, N, ., H, W), the input first.
        """
        n, _, h, w = u0.shape
        p = min(self.pad, h - 1, w - 1)  # reflect padding needs pad < size
        u0p = F.pad(u0, (p, p, p, p), mode="reflect") if p else u0
        # channels_last: ~2x faster convolutions on CPU (oneDNN) and on GPU (cuDNN NHWC).
        u0p = u0p.contiguous(memory_format=torch.channels_last)
        if m0 is None:
            m = u0p.new_zeros(n, 1, u0p.shape[-2], u0p.shape[-1])
        else:
            m = F.pad(m0, (p, p, p, p), mode="reflect") if p else m0
        u = u0p
        tables = self._tables()
        crop = (slice(None), slice(None), slice(p, p + h), slice(p, p + w))
        us, ms = [u[crop]], [m[crop]]
        for t in range(self.steps):
            gu, gm = self.gradients(t, u, m, u0p, tables)
            u = (u - gu).clamp(0, 1)
            m = (m - gm).clamp(0, 1)
            if return_all:
                us.append(u[crop])
                ms.append(m[crop])
        if return_all:
            return torch.stack(us), torch.stack(ms)
        return u[crop], m[crop]

    @torch.no_grad()
    def project_(self) -> None:
        """Project parameters onto the paper's admissible set (call after each optimiser step)."""
        # One row per output kernel (all its input channels); reshape may copy (channels_last
        # weights), so the result is written back with copy_, which handles any layout.
        for p, proj in ((self.Ku, project_zero_mean_l1 if self.zero_mean_u else project_l1_ball),
                        (self.Km, project_zero_mean_l1), (self.K, project_l1_ball)):
            p.copy_(proj(p.reshape(p.shape[0], -1)).reshape(p.shape))
        self.lam.clamp_(min=0)


def varnet_loss(u_t: torch.Tensor, m_t: torch.Tensor, g_u: torch.Tensor, g_m: torch.Tensor) -> torch.Tensor:
    """1/6 ||u_T - g_u||^2 + 1/2 ||m_T - g_m||^2 per image, mean over the batch."""
    n = u_t.shape[0]
    return (((u_t - g_u) ** 2).sum() / 6 + ((m_t - g_m) ** 2).sum() / 2) / n


@register_model("varnet_seg")
class VarNetSegmenter(nn.Module):
    """A VarNet as a segmentation network: x = rgb / 255 (mean 0, std 1) -> logits (N, 2, H, W).

    The logits are (0, logit(m_T)), so softmax class 1 equals m_T (clamped to [1e-4, 1 - 1e-4]).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.varnet = VarNet(**kwargs)
        self.config = dict(self.varnet.config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits (N, 2, H, W) of an image batch in [0, 1]."""
        # Ten unrolled steps accumulate round-off: run in fp32 even under bf16 autocast.
        with torch.autocast(device_type=x.device.type, enabled=False):
            _, m = self.varnet(x.float().clamp(0, 1))
            m = m.clamp(1e-4, 1 - 1e-4)
            return torch.cat([torch.zeros_like(m), torch.log(m) - torch.log1p(-m)], 1)
