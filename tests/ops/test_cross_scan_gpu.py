"""GPU backends of ``segman.ops.cross_scan`` / ``cross_merge`` against explicit index formulas.

Self-contained: the references below write docs/model.md §4.2 out index by index in float64.  Scan is a
pure copy, so every backend must match it exactly; merge adds four values, so it must match within
one rounding of the output dtype (fp32: 1e-6, bf16/fp16: 1e-2 relative L2).  Gradients: the
backward of scan is merge and vice versa.  Skipped without CUDA.
"""
from __future__ import annotations

import importlib

import pytest
import torch

from segman.ops import cross_merge, cross_scan

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")

MODULE = importlib.import_module("segman.ops.cross_scan")
F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
DTYPE_IDS = {F32: "f32", BF16: "bf16", F16: "f16"}
MERGE_TOL = {F32: 1e-6, BF16: 1e-2, F16: 1e-2}
SIZES = [(2, 3, 1, 1), (2, 3, 5, 7), (1, 4, 33, 65), (2, 8, 64, 64), (1, 2, 128, 96), (1, 3, 70, 131)]


def _backends(attr):
    return [b.name for b in getattr(MODULE, attr)]


def _skip_unless(attr, name, x):
    for b in getattr(MODULE, attr):
        if b.name == name:
            reason = b.can_run(x)
            if reason:
                pytest.skip(f"{name} cannot run: {reason}")
            return
    pytest.skip(f"{name} is not registered for {attr}")


def index_scan(x):
    """(B, C, H, W) → (B, 4, C, L) by explicit positions, float64."""
    batch, channels, height, width = x.shape
    length = height * width
    h = torch.arange(height, device=x.device)[:, None].expand(height, width).reshape(-1)
    w = torch.arange(width, device=x.device)[None, :].expand(height, width).reshape(-1)
    row, col = h * width + w, w * height + h
    v = x.to(F64).reshape(batch, channels, length)            # value of pixel (h, w) at index row
    out = torch.zeros(batch, 4, channels, length, dtype=F64, device=x.device)
    out[:, 0, :, row] = v
    out[:, 1, :, col] = v
    out[:, 2, :, length - 1 - row] = v
    out[:, 3, :, length - 1 - col] = v
    return out


def index_merge(y):
    """(B, 4, C, H, W) → (B, C, L) by explicit positions, float64."""
    batch, _, channels, height, width = y.shape
    length = height * width
    h = torch.arange(height, device=y.device)[:, None].expand(height, width).reshape(-1)
    w = torch.arange(width, device=y.device)[None, :].expand(height, width).reshape(-1)
    row, col = h * width + w, w * height + h
    s = y.to(F64).reshape(batch, 4, channels, length)
    return s[:, 0][..., row] + s[:, 1][..., col] + s[:, 2][..., length - 1 - row] + s[:, 3][..., length - 1 - col]


def rel_l2(a, b):
    a, b = a.detach().to(F64), b.detach().to(F64)
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [F32, BF16, F16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_scan_is_exact(backend, dtype, size):
    x = torch.randn(*size, device="cuda").to(dtype)
    _skip_unless("SCAN_BACKENDS", backend, x)
    out = cross_scan(x, backend=backend)
    assert out.dtype == dtype and out.shape == (size[0], 4, size[1], size[2] * size[3])
    assert torch.equal(out.to(F64), index_scan(x))


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [F32, BF16, F16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_merge_matches_index_formula(backend, dtype, size):
    batch, channels, height, width = size
    y = torch.randn(batch, 4, channels, height, width, device="cuda").to(dtype)
    _skip_unless("MERGE_BACKENDS", backend, y)
    out = cross_merge(y, backend=backend)
    assert out.dtype == dtype and out.shape == (batch, channels, height * width)
    ref = index_merge(y)
    assert torch.isfinite(out).all()
    assert rel_l2(out, ref) < MERGE_TOL[dtype]


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_noncontiguous_inputs(backend):
    x = torch.randn(2, 40, 24, 6, device="cuda").permute(0, 3, 2, 1)      # (2, 6, 24, 40), strided
    _skip_unless("SCAN_BACKENDS", backend, x)
    assert torch.equal(cross_scan(x, backend=backend).to(F64), index_scan(x))
    y = torch.randn(2, 6, 4, 24, 40, device="cuda").transpose(1, 2)       # (2, 4, 6, 24, 40), strided
    assert rel_l2(cross_merge(y, backend=backend), index_merge(y)) < 1e-6


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [F32, BF16], ids=DTYPE_IDS.get)
def test_gradients_are_the_adjoint(backend, dtype):
    batch, channels, height, width = 2, 5, 19, 37
    x = torch.randn(batch, channels, height, width, device="cuda").to(dtype).requires_grad_()
    _skip_unless("SCAN_BACKENDS", backend, x)
    g = torch.randn(batch, 4, channels, height * width, device="cuda").to(dtype)
    (gx,) = torch.autograd.grad(cross_scan(x, backend=backend), x, g)
    assert gx.dtype == dtype
    assert rel_l2(gx, index_merge(g.view(batch, 4, channels, height, width)).view_as(gx)) < MERGE_TOL[dtype]
    y = torch.randn(batch, 4, channels, height, width, device="cuda").to(dtype).requires_grad_()
    gy_out = torch.randn(batch, channels, height * width, device="cuda").to(dtype)
    (gy,) = torch.autograd.grad(cross_merge(y, backend=backend), y, gy_out)
    assert torch.equal(gy.to(F64), index_scan(gy_out.view(batch, channels, height, width)).view_as(gy))


def test_auto_selection_uses_triton_on_cuda():
    x = torch.randn(1, 2, 8, 8, device="cuda")
    if "triton" in _backends("SCAN_BACKENDS") and MODULE.SCAN_BACKENDS[0].can_run(x) is None:
        assert MODULE.SCAN_BACKENDS[0].name == "triton"
    assert torch.equal(cross_scan(x).to(F64), index_scan(x))


# --------------------------------------------------------------------------------------------------
# ss2d_scan: cross-scan → selective scan → cross-merge, fused (triton) or composed (unfused)
# --------------------------------------------------------------------------------------------------

SS2D = importlib.import_module("segman.ops.ss2d")
SS2D_TOL = {F32: 1e-5, BF16: 1e-2, F16: 1e-2}


def ss2d_inputs(batch, channels, height, width, d_state, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    length = height * width

    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=gen, dtype=F64) * scale + shift)

    return dict(
        x=rnd(batch, channels, height, width).to(dtype).cuda(),
        delta=rnd(batch, 4 * channels, length, scale=0.5, shift=-0.5).to(dtype).cuda(),
        A=-(torch.rand(4 * channels, d_state, generator=gen, dtype=F64) + 0.1).float().cuda(),
        B=rnd(batch, 4, d_state, length).to(dtype).cuda(),
        C=rnd(batch, 4, d_state, length).to(dtype).cuda(),
        D=rnd(4 * channels).float().cuda(),
        delta_bias=rnd(4 * channels, scale=0.5).float().cuda(),
    )


@pytest.mark.parametrize("backend", ["triton", "unfused"])
@pytest.mark.parametrize("dtype", [F32, BF16, F16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("size", [(2, 3, 5, 7, 1), (2, 8, 32, 32, 1), (1, 4, 33, 17, 1), (2, 2, 6, 9, 3)],
                         ids=lambda s: "x".join(map(str, s)))
def test_ss2d_scan_matches_float64_composition(backend, dtype, size):
    from segman.ops import ss2d_scan

    inputs = ss2d_inputs(*size, dtype)
    for b in SS2D.BACKENDS:
        if b.name == backend and b.can_run(*inputs.values(), True):
            pytest.skip(f"{backend}: {b.can_run(*inputs.values(), True)}")
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    leaves64 = {k: v.detach().to(F64).requires_grad_() for k, v in inputs.items()}
    out = ss2d_scan(**leaves, backend=backend)
    ref = ss2d_scan(**leaves64, backend="torch")
    assert out.dtype == F32 and out.shape == (size[0], size[1], size[2] * size[3])
    dy = torch.randn(out.shape, dtype=F64, device="cuda")
    grads = torch.autograd.grad(out, list(leaves.values()), dy.float())
    ref_grads = torch.autograd.grad(ref, list(leaves64.values()), dy)
    assert torch.isfinite(out).all() and rel_l2(out, ref) < SS2D_TOL[dtype]
    for name, leaf, g, rg in zip(leaves, leaves.values(), grads, ref_grads):
        assert g.dtype == leaf.dtype, name
        assert torch.isfinite(g).all(), name
        assert rel_l2(g, rg) < SS2D_TOL[dtype], f"d{name}: {rel_l2(g, rg):.2e}"
