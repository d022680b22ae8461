"""``segman.ops.selective_scan`` against a float64 loop written from docs/model.md §4.3.

Tolerances (relative L2 error against the float64 loop run on the *same* rounded inputs):
the recurrence is computed in fp32 whatever the input dtype (docs/model.md §4.3), so only fp32 rounding
remains for every input dtype; gradients of low-precision inputs are rounded to that dtype.
"""
import pytest
import torch

from ops_testing import (EXTENDED, assert_rel_close, backend_device_params, ref_selective_scan,
                         ref_selective_scan_n1_python, skip_if_backend_declines)
from segman.ops import selective_scan

BACKEND_DEVICES = backend_device_params("selective_scan")

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16

# Forward: relative L2 error vs the float64 loop (inputs rounded to the dtype first).
FWD_TOL = {F64: 1e-12, F32: 1e-5, F16: 1e-4, BF16: 1e-4}
# Gradients vs float64 autograd of the loop: du/dB/dC/ddelta come back in the input dtype.
GRAD_TOL = {F64: 1e-10, F32: 1e-4, F16: 5e-3, BF16: 2e-2}

DTYPE_IDS = {F64: "f64", F32: "f32", BF16: "bf16", F16: "f16"}




def make_inputs(batch, groups, per_group, d_state, length, dtype=F32, *, with_D=True, with_bias=True,
                softplus=True, noncontig=False, seed=0, device="cpu", param_dtype=None):
    """Random scan inputs.  u/delta/B/C in ``dtype``; A/D/delta_bias in ``param_dtype`` (float32 for
    low-precision inputs, as SegMAN passes them).  ``noncontig`` makes every tensor a strided view."""
    gen = torch.Generator().manual_seed(seed)
    if param_dtype is None:
        param_dtype = dtype if dtype in (F32, F64) else F32
    channels = groups * per_group

    def rnd(shape, dt, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=gen, dtype=F64) * scale + shift).to(dt).to(device)

    if noncontig:
        u = rnd((batch, length, channels), dtype).transpose(1, 2)
        if softplus:
            delta = rnd((batch, channels, 2 * length), dtype, 0.5, -1.0)[..., ::2]
        else:
            delta = (torch.rand(batch, channels, 2 * length, generator=gen, dtype=F64) * 0.5 + 0.05
                     ).to(dtype).to(device)[..., 1::2]
        A = -torch.exp(rnd((d_state, channels), F64, 0.5)).to(param_dtype).t()
        B = rnd((batch, groups, length, d_state), dtype).transpose(2, 3)
        C = rnd((batch, d_state, groups, length), dtype).transpose(1, 2)
        D = rnd((2 * channels,), param_dtype)[::2] if with_D else None
        delta_bias = rnd((channels, 2), param_dtype, 0.3)[:, 1] if with_bias else None
        if delta_bias is not None and not softplus:
            delta_bias = delta_bias.abs()  # raw steps must stay positive: exp(dt*A) > 1 would blow up
        assert not u.is_contiguous() and not delta.is_contiguous()
    else:
        u = rnd((batch, channels, length), dtype)
        if softplus:
            delta = rnd((batch, channels, length), dtype, 0.5, -1.0)
        else:
            delta = (torch.rand(batch, channels, length, generator=gen, dtype=F64) * 0.5 + 0.05).to(dtype).to(device)
        A = -torch.exp(rnd((channels, d_state), F64, 0.5)).to(param_dtype)
        B = rnd((batch, groups, d_state, length), dtype)
        C = rnd((batch, groups, d_state, length), dtype)
        D = rnd((channels,), param_dtype) if with_D else None
        delta_bias = rnd((channels,), param_dtype, 0.3) if with_bias else None
        if delta_bias is not None and not softplus:
            delta_bias = delta_bias.abs()
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=D, delta_bias=delta_bias, delta_softplus=softplus)


# (batch, groups, channels per group, d_state, length): batch > 1, odd sizes, N = 1 and 4, G = 4 and 1.
QUICK_SHAPES = [(2, 4, 3, 1, 17), (2, 1, 5, 4, 33), (3, 4, 2, 4, 9), (2, 1, 1, 1, 1)]
EXTENDED_SHAPES = [(1, 2, 7, 16, 129), (4, 4, 8, 1, 257), (2, 8, 3, 2, 64), (1, 4, 16, 4, 2049)]
SHAPES = QUICK_SHAPES + (EXTENDED_SHAPES if EXTENDED else [])

VARIANTS = {  # with_D, with_bias, softplus
    "D-bias-softplus": (True, True, True),
    "noD": (False, True, True),
    "nobias": (True, False, True),
    "bare-softplus": (False, False, True),
    "nosoftplus": (True, True, False),
}


def _run(inputs, backend):
    return selective_scan(**inputs, backend=backend)


class TestForwardAgainstLoop:
    @pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
    @pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
    @pytest.mark.parametrize("variant", list(VARIANTS))
    @pytest.mark.parametrize("dtype", [F32, BF16, F16, F64], ids=DTYPE_IDS.get)
    def test_matches_loop(self, backend, device, shape, variant, dtype):
        with_D, with_bias, softplus = VARIANTS[variant]
        inputs = make_inputs(*shape, dtype, with_D=with_D, with_bias=with_bias, softplus=softplus, device=device)
        skip_if_backend_declines("selective_scan", backend, *inputs.values())
        out = _run(inputs, backend)
        assert out.dtype == (F64 if dtype == F64 else F32)
        assert out.device.type == device
        assert_rel_close(out, ref_selective_scan(**inputs), FWD_TOL[dtype], f"{backend} {shape} {variant}")

    @pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
    @pytest.mark.parametrize("shape", [(2, 4, 3, 1, 17), (3, 1, 4, 4, 12)], ids=lambda s: "x".join(map(str, s)))
    @pytest.mark.parametrize("dtype", [F32, BF16], ids=DTYPE_IDS.get)
    def test_noncontiguous_inputs(self, backend, device, shape, dtype):
        inputs = make_inputs(*shape, dtype, noncontig=True, device=device)
        contiguous = {k: (v.contiguous() if torch.is_tensor(v) else v) for k, v in inputs.items()}
        skip_if_backend_declines("selective_scan", backend, *contiguous.values())
        out = _run(inputs, backend)
        assert_rel_close(out, ref_selective_scan(**contiguous), FWD_TOL[dtype], f"{backend} non-contiguous")
        assert torch.equal(out, _run(contiguous, backend)), "strided views must give the same result"

    @pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
    def test_auto_selection_matches_reference(self, backend, device):
        inputs = make_inputs(2, 4, 2, 4, 19, F32, device=device)
        assert_rel_close(selective_scan(**inputs), ref_selective_scan(**inputs), FWD_TOL[F32], "auto backend")

    @pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
    def test_groups_use_their_own_B_and_C(self, backend, device):
        """Channel c reads B/C of group c // Dg: zeroing group 1 of B and C zeroes exactly its channels
        (apart from the D skip term)."""
        inputs = make_inputs(2, 4, 3, 2, 11, F32, with_D=False, device=device)
        inputs["B"][:, 1] = 0
        out = _run(inputs, backend)
        assert torch.count_nonzero(out[:, 3:6]) == 0
        assert torch.count_nonzero(out[:, :3]) > 0 and torch.count_nonzero(out[:, 6:]) > 0

    @pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
    @pytest.mark.parametrize("dtype", [F32, BF16], ids=DTYPE_IDS.get)
    def test_softplus_threshold_and_large_steps(self, backend, device, dtype):
        """delta + delta_bias from -30 to 200: softplus uses x itself above 20 (no exp overflow), and
        huge steps make exp(dt*A) underflow to exactly 0."""
        inputs = make_inputs(2, 2, 2, 4, 24, dtype, device=device)
        ramp = torch.linspace(-30.0, 200.0, 24, dtype=F64)
        inputs["delta"] = (ramp.expand(2, 4, 24) + torch.randn(2, 4, 24, dtype=F64)).to(dtype).to(device)
        out = _run(inputs, backend)
        assert torch.isfinite(out).all()
        assert_rel_close(out, ref_selective_scan(**inputs), FWD_TOL[dtype], "large delta")

    @pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
    def test_zero_input_gives_zero_output(self, backend, device):
        inputs = make_inputs(2, 2, 3, 4, 10, F32, device=device)
        inputs["u"] = torch.zeros_like(inputs["u"])
        assert torch.count_nonzero(_run(inputs, backend)) == 0


class TestOutputDtype:
    @pytest.mark.parametrize("dtype,expected", [(F32, F32), (BF16, F32), (F16, F32), (F64, F64)],
                             ids=["f32", "bf16", "f16", "f64"])
    def test_output_dtype(self, dtype, expected):
        inputs = make_inputs(2, 2, 2, 1, 7, dtype)
        out = selective_scan(**inputs)
        assert out.dtype == expected
        assert out.shape == inputs["u"].shape

    @pytest.mark.parametrize("dtype", [BF16, F16], ids=DTYPE_IDS.get)
    def test_low_precision_params_accepted(self, dtype):
        """A, D and delta_bias may share u's low-precision dtype too."""
        inputs = make_inputs(2, 2, 2, 2, 7, dtype, param_dtype=dtype)
        out = selective_scan(**inputs)
        assert out.dtype == F32
        assert_rel_close(out, ref_selective_scan(**inputs), FWD_TOL[dtype], "low-precision params")


GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


class TestGradients:
    @pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
    @pytest.mark.parametrize("variant", ["D-bias-softplus", "bare-softplus", "nosoftplus"])
    def test_gradcheck_float64(self, backend, device, variant):
        with_D, with_bias, softplus = VARIANTS[variant]
        inputs = make_inputs(2, 2, 2, 2, 5, F64, with_D=with_D, with_bias=with_bias, softplus=softplus,
                             seed=1, device=device)
        skip_if_backend_declines("selective_scan", backend, *inputs.values())
        names = [n for n in GRAD_NAMES if inputs[n] is not None]
        leaves = [inputs[n].detach().clone().requires_grad_() for n in names]

        def fn(*tensors):
            return selective_scan(**{**inputs, **dict(zip(names, tensors))}, backend=backend)

        assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)

    @pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
    @pytest.mark.parametrize("shape", [(2, 4, 2, 1, 13), (2, 1, 3, 4, 9)], ids=lambda s: "x".join(map(str, s)))
    @pytest.mark.parametrize("variant", ["D-bias-softplus", "nosoftplus"])
    @pytest.mark.parametrize("dtype", [F32, BF16, F16], ids=DTYPE_IDS.get)
    def test_grads_match_float64_loop(self, backend, device, shape, variant, dtype):
        with_D, with_bias, softplus = VARIANTS[variant]
        inputs = make_inputs(*shape, dtype, with_D=with_D, with_bias=with_bias, softplus=softplus,
                             seed=2, device=device)
        names = [n for n in GRAD_NAMES if inputs[n] is not None]
        leaves = [inputs[n].detach().clone().requires_grad_() for n in names]
        leaves64 = [t.detach().to("cpu", F64).requires_grad_() for t in leaves]
        gout = torch.randn(inputs["u"].shape, dtype=F64)

        out = selective_scan(**{**inputs, **dict(zip(names, leaves))}, backend=backend)
        grads = torch.autograd.grad((out * gout.to(out.device, out.dtype)).sum(), leaves)
        ref = ref_selective_scan(**{**inputs, **dict(zip(names, leaves64))})
        ref_grads = torch.autograd.grad((ref * gout).sum(), leaves64)
        for name, leaf, g, rg in zip(names, leaves, grads, ref_grads):
            assert g.dtype == leaf.dtype, f"d{name} dtype {g.dtype} != {leaf.dtype}"
            tol = GRAD_TOL[dtype] if leaf.dtype == dtype else GRAD_TOL[F32]
            assert_rel_close(g, rg, tol, f"{backend} d{name}")

    @pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
    def test_grads_with_noncontiguous_inputs(self, backend, device):
        inputs = make_inputs(2, 2, 3, 2, 9, F32, noncontig=True, device=device)
        names = [n for n in GRAD_NAMES if inputs[n] is not None]
        for n in names:
            inputs[n].requires_grad_()  # views of tensors without grad are leaves themselves
        assert all(inputs[n].is_leaf for n in names)
        out = selective_scan(**inputs, backend=backend)
        grads = torch.autograd.grad(out.square().sum(), [inputs[n] for n in names])
        ref_in = {k: (v.detach().double().requires_grad_() if torch.is_tensor(v) else v) for k, v in inputs.items()}
        ref = ref_selective_scan(**ref_in)
        ref_grads = torch.autograd.grad(ref.square().sum(), [ref_in[n] for n in names])
        for name, g, rg in zip(names, grads, ref_grads):
            assert_rel_close(g, rg, GRAD_TOL[F32], f"d{name} (non-contiguous)")


def _long_inputs(length, device="cpu"):
    """Bt=1, G=1, Dg=2, N=1.  Steps dt ≈ 5 with A = -1 / -0.5 (cumulative dt·A ≈ -1e5 over the
    sequence, -1e4 per 2048-chunk), a stretch of tiny steps (dt ≈ 6e-6, long memory), and every
    1000th step dt = 1000 so that exp(dt·A) underflows to exactly 0.  The tiny steps are jittered:
    a constant exp(dt·A) would carry one systematic fp32 rounding error through 1000 steps
    (~3e-5 relative), a limit of fp32 itself rather than of the backend."""
    gen = torch.Generator().manual_seed(3)
    delta = 5.0 + 0.5 * torch.randn(1, 2, length, generator=gen, dtype=F64)
    n_tiny = min(10000, length // 3)
    stretch = slice(length // 3, length // 3 + n_tiny)
    delta[..., stretch] = -12.0 + 0.5 * torch.randn(1, 2, n_tiny, generator=gen, dtype=F64)
    delta[..., ::1000] = 1000.0
    return dict(
        u=torch.randn(1, 2, length, generator=gen, dtype=F64).float().to(device),
        delta=delta.float().to(device),
        A=torch.tensor([[-1.0], [-0.5]]).to(device),
        B=torch.randn(1, 1, 1, length, generator=gen, dtype=F64).float().to(device),
        C=torch.randn(1, 1, 1, length, generator=gen, dtype=F64).float().to(device),
        D=torch.tensor([0.5, -1.0]).to(device),
        delta_bias=torch.tensor([0.1, -0.2]).to(device),
    )


class TestLongSequence:
    LENGTH = 65536

    def test_python_reference_matches_autograd_loop(self):
        """Checks the hand-derived backward used below against autograd of the loop reference."""
        inputs = _long_inputs(300)
        inputs = {k: v.double().requires_grad_() for k, v in inputs.items()}
        gy = torch.randn(1, 2, 300, dtype=F64)
        y_py, grads_py = ref_selective_scan_n1_python(**inputs, gy=gy)
        y = ref_selective_scan(**inputs)
        grads = torch.autograd.grad((y * gy).sum(), list(inputs.values()))
        torch.testing.assert_close(y_py, y.detach(), rtol=1e-12, atol=1e-12)
        for (name, _), g in zip(inputs.items(), grads):
            torch.testing.assert_close(grads_py[name], g, rtol=1e-10, atol=1e-10, msg=name)

    @pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
    def test_long_sequence_stable(self, backend, device):
        inputs = _long_inputs(self.LENGTH, device)
        leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
        gy = torch.randn(1, 2, self.LENGTH, dtype=F64, generator=torch.Generator().manual_seed(4))
        out = selective_scan(**leaves, backend=backend)
        assert out.dtype == F32 and torch.isfinite(out).all()
        grads = torch.autograd.grad((out * gy.float().to(device)).sum(), list(leaves.values()))
        y_ref, ref_grads = ref_selective_scan_n1_python(**inputs, gy=gy)
        assert_rel_close(out, y_ref, 1e-5, "long-sequence output")
        # the long-memory stretch (tiny steps between dt = 1000 resets) on its own
        s = slice(self.LENGTH // 3 + 1, self.LENGTH // 3 + 10000)
        assert_rel_close(out[..., s], y_ref[..., s], 1e-5, "long-sequence output (tiny steps)")
        for name, g in zip(leaves, grads):
            assert torch.isfinite(g).all(), f"d{name} not finite"
            assert_rel_close(g, ref_grads[name], 1e-4, f"long-sequence d{name}")


class TestErrors:
    def _inputs(self):
        return make_inputs(2, 2, 3, 4, 8, F32)

    @pytest.mark.parametrize("field,value,match", [
        ("delta", torch.zeros(2, 6, 7), r"delta must have shape \(2, 6, 8\)"),
        ("A", torch.zeros(6, 3), r"A must have shape \(6, 4\)"),
        ("A", torch.zeros(6), r"A must have shape"),
        ("B", torch.zeros(2, 2, 4, 7), r"B must have shape \(2, 2, 4, 8\)"),
        ("B", torch.zeros(2, 2, 4), r"B must be \(batch, groups, d_state, length\)"),
        ("C", torch.zeros(2, 2, 3, 8), r"C must have shape \(2, 2, 4, 8\)"),
        ("D", torch.zeros(5), r"D must have shape \(6,\)"),
        ("delta_bias", torch.zeros(6, 1), r"delta_bias must have shape \(6,\)"),
        ("u", torch.zeros(2, 6), r"u must be \(batch, groups\*channels, length\)"),
    ], ids=["delta-len", "A-dstate", "A-1d", "B-len", "B-3d", "C-dstate", "D", "delta_bias", "u-2d"])
    def test_bad_shape(self, field, value, match):
        inputs = self._inputs()
        inputs[field] = value
        with pytest.raises(ValueError, match=match):
            selective_scan(**inputs)

    def test_empty_sequence(self):
        inputs = make_inputs(2, 2, 3, 4, 8, F32)
        for name in ("u", "delta", "B", "C"):
            inputs[name] = inputs[name][..., :0]
        with pytest.raises(ValueError, match="sequence length and d_state must be at least 1, got length 0"):
            selective_scan(**inputs)

    def test_channels_not_divisible_by_groups(self):
        inputs = make_inputs(2, 1, 7, 2, 8, F32)
        inputs["B"] = torch.zeros(2, 2, 2, 8)
        inputs["C"] = torch.zeros(2, 2, 2, 8)
        with pytest.raises(ValueError, match=r"7 channels, not a multiple of the 2 groups"):
            selective_scan(**inputs)

    @pytest.mark.parametrize("field", ["B", "delta", "C"])
    def test_mismatched_dtypes(self, field):
        inputs = self._inputs()
        inputs[field] = inputs[field].to(BF16)
        with pytest.raises(ValueError, match=rf"share one dtype.*u: torch.float32.*{field}: torch.bfloat16"):
            selective_scan(**inputs)

    def test_integer_input(self):
        inputs = self._inputs()
        inputs["u"] = torch.zeros(2, 6, 8, dtype=torch.int32)
        with pytest.raises(ValueError, match=r"u must be a floating tensor"):
            selective_scan(**inputs)
