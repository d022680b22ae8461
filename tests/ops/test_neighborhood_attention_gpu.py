"""GPU backends of ``segman.ops.neighborhood_attention_2d`` (triton, natten) and the torch reference on
CUDA, against this file's own float64 per-pixel loop (docs/model.md §3.2, dilation 1), values and the
gradients of q, k, v and rpb.  Skipped without CUDA; natten cases skip where NATTEN declines.

Tolerances (relative L2 error against the float64 loop on the same rounded inputs; max abs error
within 10× that times max |ref|):
  fp32  forward 1e-5, gradients 1e-4  (tf32x3 products, fp32 accumulation)
  fp16  forward 2e-3, gradients 5e-3  (probabilities and ds rounded to fp16 before the products)
  bf16  forward 1e-2, gradients 2e-2  (same, bf16)
Every output and gradient is checked finite and of the input's dtype; random inputs, fixed seeds.
"""
from __future__ import annotations

import importlib
import os
from unittest import mock

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="CUDA is not available")

F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
DTYPE_IDS = {F32: "f32", F16: "f16", BF16: "bf16"}
FWD_TOL = {F32: 1e-5, F16: 2e-3, BF16: 1e-2}
GRAD_TOL = {F32: 1e-4, F16: 5e-3, BF16: 2e-2}
NA = importlib.import_module("segman.ops.neighborhood_attention")
GPU_BACKENDS = ["triton", "triton-fused", "natten", "torch"]  # triton: its split backward; -fused: the other


@pytest.fixture(autouse=True)
def _fixed_tiles(monkeypatch):
    """The default tile of each kernel (no autotuning: tests must not depend on timings)."""
    monkeypatch.setenv("SEGMAN_NA_TRITON_AUTOTUNE", "0")
    yield


# --------------------------------------------------------------------------------------------------
# Float64 loop reference, written from the formulas (shares nothing with the backends)
# --------------------------------------------------------------------------------------------------

def _window(i: int, length: int, kernel_size: int) -> list[int]:
    start = min(max(i - kernel_size // 2, 0), length - kernel_size)
    return list(range(start, start + kernel_size))


def loop_reference(q, k, v, kernel_size, rpb=None, scale=None):
    """Per query pixel: K² logits = scale·q·k + rpb[h, key - query + K - 1], softmax, weighted v."""
    q, k, v = (t.detach().to("cpu", F64).requires_grad_(t.requires_grad) for t in (q, k, v))
    batch, heads, height, width, head_dim = q.shape
    scale = head_dim ** -0.5 if scale is None else scale
    rows = []
    for i in range(height):
        ki = _window(i, height, kernel_size)
        row = []
        for j in range(width):
            kj = _window(j, width, kernel_size)
            keys = k[:, :, ki][:, :, :, kj].reshape(batch, heads, -1, head_dim)
            vals = v[:, :, ki][:, :, :, kj].reshape(batch, heads, -1, head_dim)
            logits = scale * torch.einsum("bnd,bnkd->bnk", q[:, :, i, j], keys)
            if rpb is not None:
                bi = [a - i + kernel_size - 1 for a in ki]
                bj = [b - j + kernel_size - 1 for b in kj]
                logits = logits + rpb[:, bi][:, :, bj].reshape(heads, -1)
            row.append(torch.einsum("bnk,bnkd->bnd", torch.softmax(logits, -1), vals))
        rows.append(torch.stack(row, 2))
    return torch.stack(rows, 2), (q, k, v)


def rel_err(a: torch.Tensor, e: torch.Tensor) -> float:
    a, e = a.detach().to("cpu", F64), e.detach().to("cpu", F64)
    return float((a - e).norm() / e.norm().clamp_min(1e-300))


def assert_close(actual, expected, tol, what):
    assert tuple(actual.shape) == tuple(expected.shape), what
    a, e = actual.detach().to("cpu", F64), expected.detach().to("cpu", F64)
    assert torch.isfinite(a).all(), f"{what}: non-finite values"
    err = rel_err(a, e)
    assert err < tol, f"{what}: relative L2 error {err:.2e} >= {tol:.0e}"
    max_err = float((a - e).abs().max())
    assert max_err <= 10 * tol * float(e.abs().max()), f"{what}: max abs error {max_err:.2e}"


def make_inputs(batch, heads, height, width, head_dim, kernel_size, dtype, *, with_rpb=True, seed=0,
                layout="contiguous"):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=F64) * scale).to(dtype).cuda()

    if layout == "qkv":  # SegMAN's layout: one (B, H, W, 3, heads, d) projection, permuted views
        qkv = rnd(batch, height, width, 3, heads, head_dim).permute(3, 0, 4, 1, 2, 5)
        q, k, v = qkv[0], qkv[1], qkv[2]
    elif layout == "padded":  # rows of head_dim + 1: strides that are not multiples of 4 elements
        q, k, v = (rnd(batch, heads, height, width, head_dim + 1)[..., :head_dim] for _ in range(3))
    else:
        q, k, v = (rnd(batch, heads, height, width, head_dim) for _ in range(3))
    n = 2 * kernel_size - 1
    rpb = rnd(heads, n, n, scale=2.0).float() if with_rpb else None  # the model keeps rpb in fp32
    return q, k, v, rpb


def _skip_if_declined(backend, *args):
    for b in NA.BACKENDS:
        if b.name == backend:
            reason = b.can_run(*args)
            if reason is not None:
                pytest.skip(f"{backend} declines: {reason}")
            return
    pytest.skip(f"{backend} is not registered")


def run_case(backend, *case, **options):
    """``_run_case`` with ``backend`` "triton" on its split backward, "triton-fused" on its fused one."""
    if not backend.startswith("triton"):
        return _run_case(backend, *case, **options)
    with mock.patch.dict(os.environ, {"SEGMAN_NA_BACKWARD": "fused" if backend == "triton-fused" else "split"}):
        return _run_case("triton", *case, **options)


def _run_case(backend, batch, heads, height, width, head_dim, kernel_size, dtype, *, with_rpb=True,
              scale=None, seed=0, layout="contiguous", rpb_grad=True):
    from segman.ops import neighborhood_attention_2d

    q, k, v, rpb = make_inputs(batch, heads, height, width, head_dim, kernel_size, dtype, with_rpb=with_rpb,
                               seed=seed, layout=layout)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    rpb_leaf = rpb.detach().clone().requires_grad_(rpb_grad) if rpb is not None else None
    call_scale = scale if scale is not None else head_dim ** -0.5
    _skip_if_declined(backend, *leaves, kernel_size, 1, rpb_leaf, call_scale)
    out = neighborhood_attention_2d(*leaves, kernel_size, rpb=rpb_leaf, scale=scale, backend=backend)
    assert out.dtype == dtype and out.shape == q.shape
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    wrt = leaves + ([rpb_leaf] if rpb_leaf is not None and rpb_grad else [])
    grads = torch.autograd.grad(out, wrt, gout.to(dtype).cuda())

    ref_rpb = rpb.detach().to("cpu", F64).requires_grad_(rpb_grad) if rpb is not None else None
    ref, ref_leaves = loop_reference(*[t.detach().requires_grad_() for t in (q, k, v)], kernel_size, ref_rpb, scale)
    ref_wrt = list(ref_leaves) + ([ref_rpb] if ref_rpb is not None and rpb_grad else [])
    ref_grads = torch.autograd.grad(ref, ref_wrt, gout.to(dtype).to(F64))

    tag = f"{backend} {DTYPE_IDS[dtype]} {batch}x{heads}x{height}x{width}x{head_dim} K{kernel_size}"
    assert_close(out, ref, FWD_TOL[dtype], f"{tag} out")
    for name, g, rg, leaf in zip(("dq", "dk", "dv", "drpb"), grads, ref_grads, wrt):
        assert g.dtype == leaf.dtype, f"{tag} {name} dtype"
        assert_close(g, rg, GRAD_TOL[dtype], f"{tag} {name}")
    return out, grads


# --------------------------------------------------------------------------------------------------
# Sweeps
# --------------------------------------------------------------------------------------------------

HEAD_DIMS = [16, 20, 24, 28, 32, 36, 64, 128]
DTYPES = [F32, F16, BF16]
KERNEL_SIZES = [3, 5, 7, 9, 11, 13]


@needs_cuda
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_head_dims(backend, dtype, head_dim):
    """Every head dim (padded to a power of two inside the kernel), each dtype; odd map, batch 2."""
    run_case(backend, 2, 2, 9, 11, head_dim, 5, dtype, seed=head_dim)


@needs_cuda
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("kernel_size", KERNEL_SIZES)
@pytest.mark.parametrize("shape", ["map=kernel", "odd-map"])
@pytest.mark.parametrize("dtype", [F32, BF16], ids=DTYPE_IDS.get)
def test_kernel_sizes(backend, kernel_size, shape, dtype):
    """Maps equal to the kernel (full attention) and maps not a multiple of any tile."""
    height, width = (kernel_size, kernel_size) if shape == "map=kernel" else (kernel_size + 6, 2 * kernel_size + 3)
    run_case(backend, 2, 2, height, width, 24, kernel_size, dtype, seed=kernel_size)


@needs_cuda
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("case", [
    dict(with_rpb=False),
    dict(scale=1.0),
    dict(scale=0.3, with_rpb=False),
    dict(rpb_grad=False),
    dict(layout="qkv"),
    dict(layout="padded"),
], ids=["norpb", "scale1", "scale0.3-norpb", "rpb-frozen", "qkv-views", "padded-rows"])
@pytest.mark.parametrize("dtype", [F32, F16], ids=DTYPE_IDS.get)
def test_options(backend, case, dtype):
    run_case(backend, 3, 2, 13, 10, 32, 7, dtype, seed=7, **case)


@needs_cuda
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_segman_like_shape(backend):
    """A small SegMAN stage (36-dim heads, K 9) on a map several tiles wide, bf16."""
    run_case(backend, 2, 2, 27, 33, 36, 9, BF16, seed=3)


@needs_cuda
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_wide_border_band(backend):
    """K 13 on a 44-wide map: the queries seeing a key strip near the right border span more
    columns than one query chunk (the dk/dv kernel takes two)."""
    run_case(backend, 1, 2, 13, 44, 16, 13, F32, seed=5)


@needs_cuda
@pytest.mark.parametrize("kernel_size,head_dim,dtype,width", [(7, 32, F32, 21), (7, 20, BF16, 12), (11, 36, BF16, 21),
                                                            (3, 128, F16, 21), (9, 64, F32, 21), (5, 128, F32, 11),
                                                            (5, 64, F32, 11)])
def test_every_candidate_tile(kernel_size, head_dim, dtype, width):
    """Every tile the autotuner may pick computes the same function (fwd, dq, dk/dv and fused backward
    kernels), also on maps narrower than the tiles' key runs (12 or 11 wide: runs of 16 instead of 32),
    and fp32 at head_dim 64 and 128 on 8 warps, whose runs ``tile_run`` keeps at 32."""
    tb = importlib.import_module("segman.ops.triton_backend.neighborhood_attention")
    tiles = {kind: tb.candidates(kind, kernel_size, head_dim, dtype) for kind in ("fwd", "dq", "dkdv", "bwd")}
    try:
        for i in range(max(len(t) for t in tiles.values())):
            tb.force_tiles(**{kind: t[min(i, len(t) - 1)] for kind, t in tiles.items()})
            for backend in ("triton", "triton-fused"):
                run_case(backend, 1, 2, 19 if width > 16 else 13, width, head_dim, kernel_size, dtype, seed=i)
    finally:
        tb.force_tiles()


@needs_cuda
def test_autotuner_times_candidates_on_the_gpu(monkeypatch):
    """With autotuning on, each kernel gets one of its candidates and the backward one of its two paths
    (timed by CUDA-graph replay, from a side stream as in a training step), and the results still match."""
    tb = importlib.import_module("segman.ops.triton_backend.neighborhood_attention")
    monkeypatch.setenv("SEGMAN_NA_TRITON_AUTOTUNE", "1")
    kernel_size, head_dim, dtype = 5, 24, BF16
    monkeypatch.setattr(tb, "_TUNED", {})
    monkeypatch.setattr(tb, "_MODES", {})
    monkeypatch.delenv("SEGMAN_NA_BACKWARD", raising=False)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        _run_case("triton", 2, 2, 13, 17, head_dim, kernel_size, dtype, seed=3)  # the backward path autotuned
    torch.cuda.synchronize()
    run = tb.key_run(tb.MAX_TW, kernel_size, 17)
    for kind in ("fwd", "dq", "dkdv", "bwd"):  # both backward paths were timed
        assert tb._TUNED[(kind, kernel_size, head_dim, dtype, run)] in tb.candidates(kind, kernel_size, head_dim, dtype)
    assert tb._MODES[(kernel_size, head_dim, dtype, run, True)] in tb.BACKWARDS


@needs_cuda
def test_auto_selection_uses_a_gpu_backend():
    """backend=None on CUDA with rpb must not fall back to the torch reference."""
    q, k, v, rpb = make_inputs(1, 2, 9, 9, 24, 5, BF16)
    chosen = NA.select("neighborhood_attention_2d", NA.BACKENDS, None, q, k, v, 5, 1, rpb, 1.0)
    assert chosen.name == "triton"


@needs_cuda
@pytest.mark.parametrize("backend", ["triton", "natten"])
def test_forced_backend_explains_why_not(backend):
    from segman.ops import BackendError, neighborhood_attention_2d

    q, k, v, rpb = make_inputs(1, 1, 8, 8, 16, 3, F32)
    with pytest.raises(BackendError, match=rf"backend '{backend}' cannot run these inputs: .+"):
        if backend == "triton":
            neighborhood_attention_2d(q.double(), k.double(), v.double(), 3, backend=backend)
        else:
            neighborhood_attention_2d(q, k, v, 3, rpb=rpb, backend=backend)


@needs_cuda
@pytest.mark.parametrize("dtype", [F32, BF16], ids=DTYPE_IDS.get)
def test_matches_torch_backend_on_cuda(dtype):
    """A larger map than the loop can afford: triton against the torch reference backend on CUDA."""
    from segman.ops import neighborhood_attention_2d

    q, k, v, rpb = make_inputs(2, 2, 40, 37, 32, 11, dtype, seed=11)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, rpb)]
    ref_leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, rpb)]
    out = neighborhood_attention_2d(*leaves[:3], 11, rpb=leaves[3], scale=1.0, backend="triton")
    ref = neighborhood_attention_2d(*ref_leaves[:3], 11, rpb=ref_leaves[3], scale=1.0, backend="torch")
    gout = torch.randn_like(ref)
    grads = torch.autograd.grad(out, leaves, gout)
    ref_grads = torch.autograd.grad(ref, ref_leaves, gout)
    assert_close(out, ref, FWD_TOL[dtype], "out")
    for name, g, rg in zip(("dq", "dk", "dv", "drpb"), grads, ref_grads):
        assert_close(g, rg, GRAD_TOL[dtype], name)


def test_reasons_on_cpu():
    """The GPU backends decline CPU tensors with a reason (and natten declines rpb before importing)."""
    q = torch.randn(1, 1, 5, 5, 16)
    rpb = torch.randn(1, 5, 5)
    reasons = {b.name: b.can_run(q, q, q, 3, 1, rpb, 1.0) for b in NA.BACKENDS}
    assert reasons["torch"] is None
    assert reasons["triton"] == "inputs are on cpu"
    assert "rpb" in reasons["natten"]
    assert [b.name for b in NA.BACKENDS][-1] == "torch"
