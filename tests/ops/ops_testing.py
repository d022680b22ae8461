"""Shared helpers for the ``segman.ops`` tests: float64 loop references written straight from the
formulas in docs/model.md §3.2 / §4.2-4.3, backend/device parametrisation, tolerances.

The references are deliberately naive (Python loops over time steps / pixels, vectorised only over
batch, heads and channels) so that they share no code or tricks with any backend.
"""
from __future__ import annotations

import importlib
import math
import os
from typing import Optional, Sequence

import pytest
import torch

EXTENDED = os.environ.get("SEGMAN_EXTENDED_TESTS", "") not in ("", "0")
"""Long sweeps run only with ``SEGMAN_EXTENDED_TESTS=1``."""

HAS_CUDA = torch.cuda.is_available()

# Every backend name an op may grow; the ones an op does not list in its BACKENDS are skipped.
ALL_BACKENDS = ("torch", "triton", "cuda", "natten")
GPU_ONLY_BACKENDS = ("triton", "cuda", "natten")
EXPORT_BACKEND = "onnx"  # runs only while torch.onnx.export traces (test_onnx_backends.py)


def op_backend_names(module: str, attr: str = "BACKENDS") -> list[str]:
    """Backend names registered by ``segman.ops.<module>`` (the module, not the function that shadows
    it in the package namespace)."""
    mod = importlib.import_module(f"segman.ops.{module}")
    return [b.name for b in getattr(mod, attr)]


def backend_device_params(module: str, attr: str = "BACKENDS") -> list:
    """``pytest.param(backend, device)`` for every known backend and device, skipped when the op does
    not register the backend or the device is missing.  GPU backends run on CUDA only; the torch
    reference backend runs on CPU and, when present, CUDA."""
    registered = op_backend_names(module, attr)
    params = []
    for name in ALL_BACKENDS:
        for device in (("cuda",) if name in GPU_ONLY_BACKENDS else ("cpu", "cuda")):
            marks = []
            if name not in registered:
                marks.append(pytest.mark.skip(reason=f"segman.ops.{module}: no {name!r} backend ({registered})"))
            elif device == "cuda" and not HAS_CUDA:
                marks.append(pytest.mark.skip(reason="CUDA is not available"))
            params.append(pytest.param(name, device, id=f"{name}-{device}", marks=marks))
    return params


def skip_if_backend_declines(module: str, backend: str, *args, attr: str = "BACKENDS") -> None:
    """Skip (not fail) when a GPU backend's ``can_run`` declines inputs it is documented not to take
    (e.g. float64 for gradcheck).  The torch reference backend must take everything."""
    mod = importlib.import_module(f"segman.ops.{module}")
    for b in getattr(mod, attr):
        if b.name == backend and backend != "torch":
            reason = b.can_run(*args)
            if reason is not None:
                pytest.skip(f"backend {backend!r} declines these inputs: {reason}")


def rel_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    return float((a - e).norm() / e.norm().clamp_min(1e-300))


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str = "") -> None:
    """Finite, same shape, relative L2 error below ``tol`` and max abs error below ``10*tol*max|expected|``."""
    assert tuple(actual.shape) == tuple(expected.shape), f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    assert torch.isfinite(a).all(), f"{what}: non-finite values"
    err = rel_l2(a, e)
    assert err < tol, f"{what}: relative L2 error {err:.3e} >= {tol:.1e}"
    max_err = float((a - e).abs().max()) if a.numel() else 0.0
    scale = float(e.abs().max()) if e.numel() else 0.0
    assert max_err <= 10 * tol * scale + 1e-300, f"{what}: max abs error {max_err:.3e} > 10*{tol:.1e}*{scale:.3e}"


# --------------------------------------------------------------------------------------------------
# Selective scan reference (docs/model.md §4.3)
# --------------------------------------------------------------------------------------------------

def softplus20(x: torch.Tensor) -> torch.Tensor:
    """softplus with threshold 20 (x itself above 20), written to keep autograd finite."""
    return torch.where(x > 20, x, torch.log1p(torch.exp(x.clamp(max=20))))


def ref_selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True):
    """Float64 loop over time steps; vectorised over batch, channels and d_state only."""
    u, delta, A, B, C = (t.to(torch.float64) for t in (u, delta, A, B, C))
    batch, channels, length = u.shape
    groups, d_state = B.shape[1], B.shape[2]
    per_group = channels // groups
    group_of = torch.tensor([c // per_group for c in range(channels)])
    Bc = B[:, group_of]  # (batch, channels, N, L): B[b, c // Dg]
    Cc = C[:, group_of]
    dt = delta
    if delta_bias is not None:
        dt = dt + delta_bias.to(torch.float64)[:, None]
    if delta_softplus:
        dt = softplus20(dt)
    h = u.new_zeros(batch, channels, d_state)
    ys = []
    for t in range(length):
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[:, :, None] * Bc[:, :, :, t]
        ys.append((Cc[:, :, :, t] * h).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.to(torch.float64)[:, None] * u
    return y


def _sp(x: float, softplus: bool) -> tuple[float, float]:
    """(softplus20(x), d/dx) or (x, 1)."""
    if not softplus or x > 20:
        return x, 1.0
    return math.log1p(math.exp(x)), 1.0 / (1.0 + math.exp(-x))


def ref_selective_scan_n1_python(u, delta, A, B, C, D, delta_bias, gy, delta_softplus=True):
    """Forward and hand-derived backward of the scan for d_state N=1 in plain Python floats (float64),
    fast enough for L = 65536 with a couple of channels.  Returns y and the gradients of ``sum(gy*y)``
    with respect to (u, delta, A, B, C, D, delta_bias)."""
    batch, channels, length = u.shape
    groups = B.shape[1]
    per_group = channels // groups
    to_list = lambda t: t.detach().to(torch.float64).tolist()  # noqa: E731
    u_, de_, B_, C_, gy_ = to_list(u), to_list(delta), to_list(B), to_list(C), to_list(gy)
    A_ = [row[0] for row in to_list(A)]
    D_ = to_list(D) if D is not None else [0.0] * channels
    db_ = to_list(delta_bias) if delta_bias is not None else [0.0] * channels
    y = [[None] * channels for _ in range(batch)]
    du = [[None] * channels for _ in range(batch)]
    dde = [[None] * channels for _ in range(batch)]
    dB = [[[0.0] * length for _ in range(groups)] for _ in range(batch)]
    dC = [[[0.0] * length for _ in range(groups)] for _ in range(batch)]
    dA = [0.0] * channels
    dD = [0.0] * channels
    ddb = [0.0] * channels
    exp = math.exp
    for b in range(batch):
        for c in range(channels):
            g = c // per_group
            uc, dc, Bg, Cg, gc = u_[b][c], de_[b][c], B_[b][g][0], C_[b][g][0], gy_[b][c]
            a_c, D_c, db_c = A_[c], D_[c], db_[c]
            dts, dsp, decays, hs = [0.0] * length, [0.0] * length, [0.0] * length, [0.0] * length
            yc = [0.0] * length
            h = 0.0
            for t in range(length):
                dt, d = _sp(dc[t] + db_c, delta_softplus)
                a = exp(dt * a_c)
                h = a * h + dt * Bg[t] * uc[t]
                dts[t], dsp[t], decays[t], hs[t] = dt, d, a, h
                yc[t] = Cg[t] * h + D_c * uc[t]
            y[b][c] = yc
            duc, ddc = [0.0] * length, [0.0] * length
            gh = 0.0  # dL/dh_t
            dA_c = dD_c = 0.0
            dBg, dCg = dB[b][g], dC[b][g]
            for t in range(length - 1, -1, -1):
                gh = Cg[t] * gc[t] + (gh * decays[t + 1] if t + 1 < length else 0.0)
                h_prev = hs[t - 1] if t > 0 else 0.0
                dt, a = dts[t], decays[t]
                dCg[t] += gc[t] * hs[t]
                dBg[t] += gh * dt * uc[t]
                duc[t] = gh * dt * Bg[t] + D_c * gc[t]
                ddt = gh * (a_c * a * h_prev + Bg[t] * uc[t])
                dA_c += gh * a * h_prev * dt
                dD_c += gc[t] * uc[t]
                ddc[t] = ddt * dsp[t]
            du[b][c], dde[b][c] = duc, ddc
            dA[c] += dA_c
            dD[c] += dD_c
            ddb[c] += sum(ddc)
    f64 = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    grads = {
        "u": f64(du), "delta": f64(dde), "A": f64(dA)[:, None],
        "B": f64(dB)[:, :, None, :], "C": f64(dC)[:, :, None, :],
        "D": f64(dD), "delta_bias": f64(ddb),
    }
    return f64(y), grads


# --------------------------------------------------------------------------------------------------
# Cross scan / merge references (docs/model.md §4.2), explicit index formulas
# --------------------------------------------------------------------------------------------------

def ref_cross_scan(x: torch.Tensor) -> torch.Tensor:
    batch, channels, height, width = x.shape
    length = height * width
    out = x.new_zeros(batch, 4, channels, length, dtype=torch.float64)
    for h in range(height):
        for w in range(width):
            v = x[:, :, h, w].to(torch.float64)
            out[:, 0, :, h * width + w] = v
            out[:, 1, :, w * height + h] = v
            out[:, 2, :, length - 1 - (h * width + w)] = v
            out[:, 3, :, length - 1 - (w * height + h)] = v
    return out


def ref_cross_merge(y: torch.Tensor) -> torch.Tensor:
    batch, _, channels, height, width = y.shape
    length = height * width
    seq = y.reshape(batch, 4, channels, length).to(torch.float64)
    out = seq.new_zeros(batch, channels, length)
    for h in range(height):
        for w in range(width):
            r, c = h * width + w, w * height + h
            out[:, :, r] = seq[:, 0, :, r] + seq[:, 1, :, c] + seq[:, 2, :, length - 1 - r] + seq[:, 3, :, length - 1 - c]
    return out


# --------------------------------------------------------------------------------------------------
# Neighborhood attention reference (docs/model.md §3.2 + NATTEN dilation rule)
# --------------------------------------------------------------------------------------------------

def na_axis_window(i: int, n: int, kernel_size: int, dilation: int) -> tuple[list[int], list[int]]:
    """Key indices and rpb indices along one axis for query index ``i`` of an axis of length ``n``."""
    group, ig = i % dilation, i // dilation
    n_g = len(range(group, n, dilation))
    start = min(max(ig - kernel_size // 2, 0), n_g - kernel_size)
    keys = [group + dilation * (start + a) for a in range(kernel_size)]
    bias = [start + a - ig + kernel_size - 1 for a in range(kernel_size)]
    return keys, bias


def ref_neighborhood_attention_2d(q, k, v, kernel_size, dilation=1, rpb=None, scale=None):
    """Float64 loop over query pixels; vectorised over batch and heads only.  Differentiable."""
    q, k, v = (t.to(torch.float64) for t in (q, k, v))
    if rpb is not None:
        rpb = rpb.to(torch.float64)
    batch, heads, height, width, head_dim = q.shape
    if scale is None:
        scale = head_dim ** -0.5
    rows = [na_axis_window(i, height, kernel_size, dilation) for i in range(height)]
    cols = [na_axis_window(j, width, kernel_size, dilation) for j in range(width)]
    out_rows = []
    for i in range(height):
        key_rows, bias_rows = rows[i]
        out_row = []
        for j in range(width):
            key_cols, bias_cols = cols[j]
            kw = k[:, :, key_rows][:, :, :, key_cols].reshape(batch, heads, -1, head_dim)
            vw = v[:, :, key_rows][:, :, :, key_cols].reshape(batch, heads, -1, head_dim)
            logits = scale * torch.einsum("bnd,bnkd->bnk", q[:, :, i, j], kw)
            if rpb is not None:
                logits = logits + rpb[:, bias_rows][:, :, bias_cols].reshape(heads, -1)
            p = torch.softmax(logits, dim=-1)
            out_row.append(torch.einsum("bnk,bnkd->bnd", p, vw))
        out_rows.append(torch.stack(out_row, dim=2))
    return torch.stack(out_rows, dim=2)


def strided_like(base_shape: Sequence[int], perm: Optional[Sequence[int]], dtype, gen, device="cpu",
                 scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    """A random tensor of shape ``base_shape`` permuted by ``perm`` (a non-contiguous view when
    ``perm`` is not the identity), values drawn in float64 then rounded to ``dtype``."""
    t = (torch.randn(*base_shape, generator=gen, dtype=torch.float64) * scale + shift).to(dtype).to(device)
    return t.permute(*perm) if perm is not None else t
