"""GPU backends of ``segman.ops.selective_scan`` (``cuda``, ``triton``) against a float64 loop.

Self-contained: the reference below is a float64 loop over time steps (forward) and over reversed
time steps (the adjoint recurrence, backward), written from docs/model.md §4.3 and checked against
autograd in ``test_loop_reference_matches_autograd``.  Every backend (the torch reference on CUDA
included) is compared with it on the same rounded inputs, values and all seven gradients.

Limits (relative L2 error against the float64 loop, NaN never passes): fp32 inputs 1e-5; fp16 and
bf16 inputs 1e-2 (the recurrence runs in fp32; du, ddelta, dB, dC come back rounded to the input
dtype).  The whole module is skipped without CUDA; a backend that is not registered (e.g. the
extension is not built) is skipped with the reason.
"""
from __future__ import annotations

import importlib

import pytest
import torch

from segman.ops import selective_scan
from segman.ops.dispatch import BackendError

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")

SCAN_MODULE = importlib.import_module("segman.ops.selective_scan")
F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
TOL = {F32: 1e-5, BF16: 1e-2, F16: 1e-2}
DTYPE_IDS = {F32: "f32", BF16: "bf16", F16: "f16"}
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")
BACKENDS = ("cuda", "triton", "torch")


def _backend_or_skip(name: str, inputs: dict) -> None:
    for b in SCAN_MODULE.BACKENDS:
        if b.name == name:
            reason = b.can_run(*inputs.values())
            if reason is not None:
                pytest.skip(f"backend {name!r} cannot run these inputs: {reason}")
            return
    pytest.skip(f"backend {name!r} is not registered")


# --------------------------------------------------------------------------------------------------
# float64 loop reference (forward and hand-written backward)
# --------------------------------------------------------------------------------------------------

def loop_reference(u, delta, A, B, C, D, delta_bias, softplus, dy):
    """y and the gradients of ``sum(dy * y)``; every tensor is cast to float64 on its device."""
    u, delta, A, B, C, dy = (t.detach().to(F64) for t in (u, delta, A, B, C, dy))
    batch, channels, length = u.shape
    groups, n_state = B.shape[1], B.shape[2]
    per_group = channels // groups
    Bc = B.repeat_interleave(per_group, dim=1)                      # (Bt, C, N, L)
    Cc = C.repeat_interleave(per_group, dim=1)
    raw = delta + (delta_bias.detach().to(F64)[:, None] if delta_bias is not None else 0.0)
    if softplus:
        dt = torch.where(raw > 20, raw, torch.log1p(torch.exp(raw.clamp(max=20))))
        dsp = torch.where(raw > 20, torch.ones_like(raw), torch.sigmoid(raw))
    else:
        dt, dsp = raw, torch.ones_like(raw)
    a = torch.exp(dt[:, :, None, :] * A[None, :, :, None])          # (Bt, C, N, L)
    drive = (dt * u)[:, :, None, :] * Bc
    hs = torch.empty_like(a)
    h = torch.zeros_like(a[..., 0])
    for t in range(length):
        h = torch.addcmul(drive[..., t], a[..., t], h)
        hs[..., t] = h
    y = (hs * Cc).sum(2)
    if D is not None:
        y = y + D.detach().to(F64)[:, None] * u
    g = dy[:, :, None, :] * Cc
    dhs = torch.empty_like(a)
    dh = torch.zeros_like(a[..., 0])
    for t in range(length - 1, -1, -1):
        dh = g[..., t] + a[..., t + 1] * dh if t + 1 < length else g[..., t].clone()
        dhs[..., t] = dh
    decayed_prev = a * torch.nn.functional.pad(hs[..., :-1], (1, 0))  # exp(dt_t A) h_{t-1}
    grads = {
        "u": (dhs * Bc).sum(2) * dt + (D.detach().to(F64)[:, None] * dy if D is not None else 0.0),
        "A": (dhs * decayed_prev * dt[:, :, None, :]).sum((0, 3)),
        "B": (dhs * (dt * u)[:, :, None, :]).view(batch, groups, per_group, n_state, length).sum(2),
        "C": (dy[:, :, None, :] * hs).view(batch, groups, per_group, n_state, length).sum(2),
        "D": (dy * u).sum((0, 2)) if D is not None else None,
    }
    ddelta = (dhs * (A[None, :, :, None] * decayed_prev + Bc * u[:, :, None, :])).sum(2) * dsp
    grads["delta"] = ddelta
    grads["delta_bias"] = ddelta.sum((0, 2)) if delta_bias is not None else None
    return y, grads


def make_inputs(batch, groups, per_group, d_state, length, dtype, *, seed=0, with_D=True, with_bias=True,
                noncontig=False):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    channels = groups * per_group

    def rnd(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=gen, dtype=F64) * scale + shift

    if noncontig:  # strided views with the length dimension not last in memory
        u = rnd(batch, length, channels).to(dtype).cuda().transpose(1, 2)
        delta = rnd(batch, length, channels, scale=0.5, shift=-0.5).to(dtype).cuda().transpose(1, 2)
        B = rnd(length, batch, groups, d_state).to(dtype).cuda().permute(1, 2, 3, 0)
        C = rnd(length, batch, groups, d_state).to(dtype).cuda().permute(1, 2, 3, 0)
    else:
        u = rnd(batch, channels, length).to(dtype).cuda()
        delta = rnd(batch, channels, length, scale=0.5, shift=-0.5).to(dtype).cuda()
        B = rnd(batch, groups, d_state, length).to(dtype).cuda()
        C = rnd(batch, groups, d_state, length).to(dtype).cuda()
    A = -(torch.rand(channels, d_state, generator=gen, dtype=F64) * 1.5 + 0.1)
    return dict(u=u, delta=delta, A=A.float().cuda(), B=B, C=C,
                D=rnd(channels).float().cuda() if with_D else None,
                delta_bias=(rnd(channels, scale=0.5)).float().cuda() if with_bias else None,
                delta_softplus=True)


def check(actual, expected, tol, what):
    assert tuple(actual.shape) == tuple(expected.shape), f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a = actual.detach().to(F64)
    e = expected.detach().to(F64)
    assert torch.isfinite(a).all(), f"{what}: non-finite values"
    if e.norm() == 0:  # e.g. dA at L = 1 (h_{-1} = 0): exactly zero, allow rounding-level noise
        assert float(a.abs().max()) <= 1e-6, f"{what}: expected zeros, got max {float(a.abs().max()):.2e}"
        return
    err = float((a - e).norm() / e.norm())
    assert err < tol, f"{what}: relative L2 error {err:.2e} >= {tol:.0e}"


def run_and_check(backend, inputs, dtype, seed=1):
    names = [n for n in GRAD_NAMES if inputs[n] is not None]
    leaves = {n: inputs[n].detach().clone().requires_grad_() for n in names}
    args = {**inputs, **leaves}
    out = selective_scan(**args, backend=backend)
    assert out.dtype == F32 and out.device.type == "cuda"
    gen = torch.Generator(device="cpu").manual_seed(seed)
    dy = torch.randn(out.shape, generator=gen, dtype=F64).cuda()
    grads = torch.autograd.grad(out, [leaves[n] for n in names], dy.float())
    y_ref, ref = loop_reference(**{k: v for k, v in inputs.items() if k != "delta_softplus"},
                                softplus=inputs["delta_softplus"], dy=dy)
    tol = TOL[dtype]
    check(out, y_ref, tol, f"{backend} y")
    for name, g in zip(names, grads):
        assert g.dtype == leaves[name].dtype, f"d{name}: dtype {g.dtype} != {leaves[name].dtype}"
        check(g, ref[name], tol, f"{backend} d{name}")
    return out, dict(zip(names, grads))


# (batch, groups, channels per group, d_state, length)
SHAPES = [
    (2, 4, 8, 1, 1),
    (2, 4, 8, 1, 7),
    (3, 4, 6, 1, 1000),
    (2, 2, 5, 1, 4097),
    (2, 4, 32, 1, 512),
]
SHAPES_N = [(2, 2, 3, 4, 300), (2, 1, 4, 16, 257), (1, 2, 3, 3, 77)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [F32, BF16, F16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_values_and_grads(backend, dtype, shape):
    inputs = make_inputs(*shape, dtype)
    _backend_or_skip(backend, inputs)
    run_and_check(backend, inputs, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [F32, BF16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("shape", SHAPES_N, ids=lambda s: "x".join(map(str, s)))
def test_d_state_above_one(backend, dtype, shape):
    inputs = make_inputs(*shape, dtype)
    _backend_or_skip(backend, inputs)
    run_and_check(backend, inputs, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_D,with_bias,softplus", [(False, True, True), (True, False, True),
                                                       (False, False, True), (True, True, False)],
                         ids=["noD", "nobias", "bare", "nosoftplus"])
def test_optional_terms(backend, with_D, with_bias, softplus):
    inputs = make_inputs(2, 4, 3, 1, 300, F32, with_D=with_D, with_bias=with_bias)
    inputs["delta_softplus"] = softplus
    if not softplus:  # raw steps must stay positive, else exp(dt A) > 1 grows to inf over 300 steps
        inputs["delta"] = inputs["delta"].abs() + 0.01
        if inputs["delta_bias"] is not None:
            inputs["delta_bias"] = inputs["delta_bias"].abs()
    _backend_or_skip(backend, inputs)
    run_and_check(backend, inputs, F32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [F32, BF16], ids=DTYPE_IDS.get)
def test_noncontiguous_inputs(backend, dtype):
    inputs = make_inputs(2, 4, 6, 1, 333, dtype, noncontig=True)
    _backend_or_skip(backend, inputs)
    out, grads = run_and_check(backend, inputs, dtype)
    contiguous = {k: (v.contiguous() if torch.is_tensor(v) else v) for k, v in inputs.items()}
    assert torch.equal(out, selective_scan(**contiguous, backend=backend)), "strided views must give the same result"


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_sequence(backend):
    """L = 65536 with steps that make exp(dt A) underflow to 0 and a long stretch of tiny steps."""
    inputs = make_inputs(2, 1, 2, 1, 65536, F32, seed=3)
    delta = inputs["delta"].double()
    delta[..., ::1000] = 1000.0
    delta[..., 20000:30000] = -12.0 + 0.5 * torch.randn(2, 2, 10000, dtype=F64, device="cuda")
    inputs["delta"] = delta.float()
    _backend_or_skip(backend, inputs)
    run_and_check(backend, inputs, F32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [F32, BF16], ids=DTYPE_IDS.get)
def test_softplus_threshold_and_large_steps(backend, dtype):
    inputs = make_inputs(2, 2, 2, 1, 240, dtype)
    ramp = torch.linspace(-30.0, 200.0, 240, dtype=F64)
    inputs["delta"] = (ramp.expand(2, 4, 240) + torch.randn(2, 4, 240, dtype=F64)).to(dtype).cuda()
    _backend_or_skip(backend, inputs)
    run_and_check(backend, inputs, dtype)


@pytest.mark.parametrize("length", [777, 2048, 9000])
@pytest.mark.parametrize("mode", [1, 2, 3])
@pytest.mark.parametrize("dtype", [F32, BF16], ids=DTYPE_IDS.get)
def test_cuda_kernel_modes(mode, dtype, length):
    """Every CUDA d_state-1 kernel variant (set_kernel_modes: forward 1 / 2 one warp per row with
    each register budget, 3 one block per row; backward 1 / 2 its register budgets) computes the same
    function.  20 channels per group leave an idle warp in the last block of the warp-per-row kernels;
    777 steps take the scalar path; 9000 (36 chunks) the 8-warp row blocks, whose last step has 4
    chunks for 8 warps; 2048 the 4-warp ones."""
    inputs = make_inputs(2, 3, 20, 1, length, dtype, seed=7)
    _backend_or_skip("cuda", inputs)
    ext = importlib.import_module("segman_selective_scan")
    ext.set_kernel_modes(mode, min(mode, 2))
    try:
        run_and_check("cuda", inputs, dtype)
    finally:
        ext.set_kernel_modes(0, 0)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_matches_torch_backend(backend):
    """Same inputs through the torch reference backend on the GPU: outputs agree to fp32 rounding."""
    inputs = make_inputs(2, 4, 16, 1, 2049, F32, seed=5)
    _backend_or_skip(backend, inputs)
    out = selective_scan(**inputs, backend=backend)
    ref = selective_scan(**inputs, backend="torch")
    check(out, ref, 1e-5, f"{backend} vs torch")


def test_auto_selection_prefers_a_gpu_backend():
    inputs = make_inputs(2, 4, 8, 1, 64, F32)
    order = [b.name for b in SCAN_MODULE.BACKENDS]
    chosen = next(b.name for b in SCAN_MODULE.BACKENDS if b.can_run(*inputs.values()) is None)
    assert chosen != "torch" or order == ["torch"]
    y_ref, _ = loop_reference(**{k: v for k, v in inputs.items() if k != "delta_softplus"}, softplus=True,
                              dy=torch.zeros(2, 32, 64, dtype=F64, device="cuda"))
    check(selective_scan(**inputs), y_ref, 1e-5, "auto")


def test_unsupported_inputs_raise_with_reason():
    inputs = make_inputs(1, 1, 2, 17, 16, F32)
    names = [b.name for b in SCAN_MODULE.BACKENDS]
    if "cuda" in names:
        with pytest.raises(BackendError, match="d_state 17 > 16|not installed"):
            selective_scan(**inputs, backend="cuda")
    inputs64 = {k: (v.double() if torch.is_tensor(v) else v) for k, v in make_inputs(1, 1, 2, 1, 16, F32).items()}
    for name in ("cuda", "triton"):
        if name in names:
            with pytest.raises(BackendError, match="float64|not installed"):
                selective_scan(**inputs64, backend=name)


def test_loop_reference_matches_autograd():
    """The hand-written backward of the float64 loop against autograd of a plain loop."""
    inputs = make_inputs(2, 2, 3, 2, 13, F64)
    inputs = {k: (v.double().requires_grad_() if torch.is_tensor(v) else v) for k, v in inputs.items()}
    u, delta, A, B, C, D, bias = (inputs[n] for n in GRAD_NAMES)
    dy = torch.randn(u.shape, dtype=F64, device="cuda")
    Bc, Cc = B.repeat_interleave(3, 1), C.repeat_interleave(3, 1)
    dt = torch.nn.functional.softplus(delta + bias[:, None])
    h = torch.zeros(2, 6, 2, dtype=F64, device="cuda")
    ys = []
    for t in range(13):
        h = torch.exp(dt[..., t, None] * A) * h + (dt[..., t] * u[..., t])[..., None] * Bc[..., t]
        ys.append((h * Cc[..., t]).sum(-1))
    y = torch.stack(ys, -1) + D[:, None] * u
    auto = torch.autograd.grad((y * dy).sum(), [u, delta, A, B, C, D, bias])
    y_loop, grads = loop_reference(u, delta, A, B, C, D, bias, True, dy)
    torch.testing.assert_close(y_loop, y.detach(), rtol=1e-12, atol=1e-12)
    for name, g in zip(GRAD_NAMES, auto):
        torch.testing.assert_close(grads[name], g, rtol=1e-10, atol=1e-10, msg=name)
