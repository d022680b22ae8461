"""``segman.ops.neighborhood_attention_2d`` against a float64 per-pixel loop written from
docs/model.md §3.2 (window clamped inwards at the borders, rpb indexed by key − query) and NATTEN's
dilation rule (dilation groups ``i % d``, the non-dilated rule in group coordinates).

Tolerances (relative L2 error against the float64 loop run on the *same* rounded inputs):
fp32 1e-5; fp16 / bf16 allow the logits, probabilities and output to be rounded to that dtype
(as NATTEN does), 2e-3 / 1e-2.
"""
import random

import pytest
import torch

from ops_testing import (EXTENDED, assert_rel_close, backend_device_params, na_axis_window,
                         ref_neighborhood_attention_2d, skip_if_backend_declines)
from segman.ops import neighborhood_attention_2d

BACKEND_DEVICES = backend_device_params("neighborhood_attention")

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
DTYPE_IDS = {F64: "f64", F32: "f32", BF16: "bf16", F16: "f16"}

FWD_TOL = {F64: 1e-12, F32: 1e-5, F16: 2e-3, BF16: 1e-2}
GRAD_TOL = {F64: 1e-10, F32: 1e-4, F16: 5e-3, BF16: 2e-2}




def make_qkv(batch, heads, height, width, head_dim, kernel_size, dtype=F32, *, with_rpb=True,
             noncontig=False, seed=0, device="cpu", rpb_dtype=None):
    gen = torch.Generator().manual_seed(seed)

    def rnd(shape, dt, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=F64) * scale).to(dt).to(device)

    shape = (batch, heads, height, width, head_dim)
    if noncontig:
        q = rnd((batch, height, width, heads, head_dim), dtype).permute(0, 3, 1, 2, 4)     # heads-last layout
        k = rnd((batch, heads, height, width, 2 * head_dim), dtype)[..., 1::2]             # strided head_dim
        v = rnd((batch, heads, width, height, head_dim), dtype).transpose(2, 3)            # W/H swapped
        assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    else:
        q, k, v = rnd(shape, dtype), rnd(shape, dtype), rnd(shape, dtype)
    rpb = None
    if with_rpb:
        n = 2 * kernel_size - 1
        rpb = rnd((heads, n, n), rpb_dtype or dtype)
        if noncontig:
            rpb = rnd((heads, n, n), rpb_dtype or dtype).transpose(1, 2)
    return q, k, v, rpb


# (batch, heads, H, W, head_dim, kernel_size, dilation): corners and edges everywhere at these sizes;
# maps equal to the kernel (or to kernel*dilation), non-square maps, odd residue classes for d = 2.
QUICK_CASES = [
    (2, 2, 7, 9, 20, 3, 1),
    (2, 1, 5, 5, 24, 5, 1),
    (1, 2, 7, 10, 36, 7, 1),
    (2, 2, 3, 11, 20, 3, 1),
    (2, 2, 7, 8, 24, 3, 2),
    (1, 2, 11, 10, 20, 5, 2),
    (1, 1, 14, 15, 36, 7, 2),
]
EXTENDED_CASES = [
    (1, 2, 9, 14, 20, 9, 1),
    (1, 2, 11, 12, 36, 11, 1),
    (1, 1, 13, 13, 24, 13, 1),
    (1, 1, 16, 13, 24, 13, 1),
    (1, 1, 10, 16, 24, 3, 3),
    (2, 1, 17, 15, 20, 5, 3),
    (1, 1, 26, 27, 24, 13, 2),
]


def _extended_random_cases(n=12, seed=1234):
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        kernel_size = rng.choice([3, 5, 7, 9, 11, 13])
        dilation = rng.choice([1, 1, 2, 3]) if kernel_size <= 7 else rng.choice([1, 2])
        span = kernel_size * dilation
        cases.append((rng.randint(1, 2), rng.randint(1, 3), span + rng.randint(0, 5), span + rng.randint(0, 5),
                      rng.choice([8, 20, 24, 32, 36, 64]), kernel_size, dilation))
    return cases


CASES = QUICK_CASES + (EXTENDED_CASES + _extended_random_cases() if EXTENDED else [])
CASE_ID = lambda c: "b{}h{}_{}x{}_d{}_k{}_dil{}".format(*c)  # noqa: E731

BIAS_SCALE = {"rpb-scaleNone": (True, None), "norpb-scaleNone": (False, None),
              "rpb-scale0.7": (True, 0.7), "norpb-scale1": (False, 1.0)}


class TestReferenceSelfChecks:
    """The loop reference itself, against facts that need no reference."""

    def test_axis_window_dilation1(self):
        # clamp(i - K//2, 0, n - K): windows shift inwards at the borders
        assert na_axis_window(0, 7, 3, 1) == ([0, 1, 2], [2, 3, 4])
        assert na_axis_window(3, 7, 3, 1) == ([2, 3, 4], [1, 2, 3])
        assert na_axis_window(6, 7, 3, 1) == ([4, 5, 6], [0, 1, 2])

    def test_axis_window_dilation2(self):
        # n = 7, d = 2: group 0 = {0,2,4,6} (n_g 4), group 1 = {1,3,5} (n_g 3)
        assert na_axis_window(6, 7, 3, 2) == ([2, 4, 6], [0, 1, 2])
        assert na_axis_window(5, 7, 3, 2) == ([1, 3, 5], [0, 1, 2])
        assert na_axis_window(1, 7, 3, 2) == ([1, 3, 5], [2, 3, 4])
        assert na_axis_window(2, 7, 3, 2) == ([0, 2, 4], [1, 2, 3])

    def test_kernel_equal_to_map_is_full_attention(self):
        q, k, v, rpb = make_qkv(2, 2, 5, 5, 8, 5, F64)
        ref = ref_neighborhood_attention_2d(q, k, v, 5, rpb=rpb)
        idx = torch.arange(5)
        rel = idx[None, :] - idx[:, None] + 4  # key - query + K - 1
        bias = rpb[:, rel[:, None, :, None], rel[None, :, None, :]].reshape(2, 25, 25)
        logits = torch.einsum("bnqd,bnkd->bnqk", q.flatten(2, 3), k.flatten(2, 3)) * 8 ** -0.5 + bias
        full = (logits.softmax(-1) @ v.flatten(2, 3)).reshape(q.shape)
        torch.testing.assert_close(ref, full, rtol=1e-12, atol=1e-12)


class TestForwardAgainstLoop:
    @pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
    @pytest.mark.parametrize("case", CASES, ids=CASE_ID)
    @pytest.mark.parametrize("bias_scale", list(BIAS_SCALE))
    @pytest.mark.parametrize("dtype", [F32, BF16, F16, F64], ids=DTYPE_IDS.get)
    def test_matches_loop(self, backend, device, case, bias_scale, dtype):
        *shape, kernel_size, dilation = case
        with_rpb, scale = BIAS_SCALE[bias_scale]
        q, k, v, rpb = make_qkv(*shape, kernel_size, dtype, with_rpb=with_rpb, device=device)
        args = (q, k, v, kernel_size, dilation, rpb, scale if scale is not None else shape[-1] ** -0.5)
        skip_if_backend_declines("neighborhood_attention", backend, *args)
        out = neighborhood_attention_2d(q, k, v, kernel_size, dilation=dilation, rpb=rpb, scale=scale,
                                        backend=backend)
        assert out.dtype == dtype and out.device.type == device
        ref = ref_neighborhood_attention_2d(q, k, v, kernel_size, dilation, rpb, scale)
        assert_rel_close(out, ref, FWD_TOL[dtype], f"{backend} {case} {bias_scale}")

    @pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
    @pytest.mark.parametrize("case", [(2, 2, 7, 9, 20, 3, 1), (1, 2, 8, 9, 24, 3, 2), (1, 3, 5, 6, 36, 5, 1)],
                             ids=CASE_ID)
    @pytest.mark.parametrize("dtype", [F32, BF16], ids=DTYPE_IDS.get)
    def test_noncontiguous_inputs(self, backend, device, case, dtype):
        *shape, kernel_size, dilation = case
        q, k, v, rpb = make_qkv(*shape, kernel_size, dtype, noncontig=True, device=device)
        skip_if_backend_declines("neighborhood_attention", backend, q, k, v, kernel_size, dilation, rpb, 1.0)
        out = neighborhood_attention_2d(q, k, v, kernel_size, dilation=dilation, rpb=rpb, backend=backend)
        ref = ref_neighborhood_attention_2d(q, k, v, kernel_size, dilation, rpb)
        assert_rel_close(out, ref, FWD_TOL[dtype], f"{backend} non-contiguous")
        contiguous = neighborhood_attention_2d(q.contiguous(), k.contiguous(), v.contiguous(), kernel_size,
                                               dilation=dilation, rpb=rpb.contiguous(), backend=backend)
        assert torch.equal(out, contiguous), "strided views must give the same result"

    @pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
    def test_float32_rpb_with_bf16_inputs(self, backend, device):
        """SegMAN keeps the rpb parameter in fp32 under autocast; NATTEN casts it to k's dtype."""
        q, k, v, rpb = make_qkv(2, 2, 7, 8, 20, 5, BF16, rpb_dtype=F32, device=device)
        skip_if_backend_declines("neighborhood_attention", backend, q, k, v, 5, 1, rpb, 1.0)
        out = neighborhood_attention_2d(q, k, v, 5, rpb=rpb, backend=backend)
        assert out.dtype == BF16
        ref = ref_neighborhood_attention_2d(q, k, v, 5, 1, rpb.to(BF16))
        assert_rel_close(out, ref, FWD_TOL[BF16], "fp32 rpb, bf16 q/k/v")

    @pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
    def test_auto_selection_matches_reference(self, backend, device):
        q, k, v, rpb = make_qkv(2, 2, 6, 7, 24, 3, F32, device=device)
        assert_rel_close(neighborhood_attention_2d(q, k, v, 3, rpb=rpb),
                         ref_neighborhood_attention_2d(q, k, v, 3, 1, rpb), FWD_TOL[F32], "auto backend")

    @pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
    def test_constant_values_pass_through(self, backend, device):
        """Softmax weights sum to one: constant v gives that constant, whatever q, k and rpb."""
        q, k, v, rpb = make_qkv(1, 2, 6, 9, 20, 5, F32, device=device)
        v = torch.full_like(v, 0.25)
        skip_if_backend_declines("neighborhood_attention", backend, q, k, v, 5, 1, rpb, 1.0)
        out = neighborhood_attention_2d(q, k, v, 5, rpb=rpb * 10, backend=backend)
        torch.testing.assert_close(out, v, rtol=1e-6, atol=1e-6)

    @pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
    @pytest.mark.parametrize("dilation", [1, 2])
    def test_dominant_bias_selects_the_key(self, backend, device, dilation):
        """A huge rpb at one relative offset makes every query copy the value of that key, which pins
        the window placement and bias indexing at corners and edges directly."""
        kernel_size, height, width = 3, 7, 8
        q, k, v, _ = make_qkv(1, 1, height, width, 4, kernel_size, F64, with_rpb=False, device=device)
        rpb = torch.zeros(1, 5, 5, dtype=F64, device=device)
        rpb[0, 2 + 1, 2 - 1] = 1e4  # key row = query row + 1 (in group coordinates), key col = col - 1
        skip_if_backend_declines("neighborhood_attention", backend, q, k, v, kernel_size, dilation, rpb, 1.0)
        out = neighborhood_attention_2d(q, k, v, kernel_size, dilation=dilation, rpb=rpb, backend=backend)
        for i in range(height):
            rows, row_bias = na_axis_window(i, height, kernel_size, dilation)
            for j in range(width):
                cols, col_bias = na_axis_window(j, width, kernel_size, dilation)
                if 3 in row_bias and 1 in col_bias:
                    key = v[0, 0, rows[row_bias.index(3)], cols[col_bias.index(1)]]
                    torch.testing.assert_close(out[0, 0, i, j], key, rtol=1e-9, atol=1e-9)


class TestOutputDtype:
    @pytest.mark.parametrize("dtype", [F32, BF16, F16, F64], ids=DTYPE_IDS.get)
    def test_output_dtype_is_q_dtype(self, dtype):
        q, k, v, rpb = make_qkv(1, 2, 5, 6, 8, 3, dtype)
        out = neighborhood_attention_2d(q, k, v, 3, rpb=rpb)
        assert out.dtype == dtype and out.shape == q.shape


class TestGradients:
    @pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
    @pytest.mark.parametrize("case,scale", [((1, 1, 4, 5, 3, 3, 1), None), ((1, 1, 6, 6, 2, 3, 2), 0.8),
                                            ((1, 2, 5, 5, 2, 5, 1), 1.0)],
                             ids=["k3", "k3-dil2", "k5-full"])
    def test_gradcheck_float64(self, backend, device, case, scale):
        *shape, kernel_size, dilation = case
        q, k, v, rpb = make_qkv(*shape, kernel_size, F64, seed=1, device=device)
        skip_if_backend_declines("neighborhood_attention", backend, q, k, v, kernel_size, dilation, rpb, 1.0)
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, rpb)]

        def fn(q, k, v, rpb):
            return neighborhood_attention_2d(q, k, v, kernel_size, dilation=dilation, rpb=rpb, scale=scale,
                                             backend=backend)

        assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)

    @pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
    @pytest.mark.parametrize("case,with_rpb", [((2, 2, 7, 9, 20, 3, 1), True), ((1, 2, 8, 7, 24, 3, 2), True),
                                               ((1, 1, 5, 6, 36, 5, 1), False)],
                             ids=["k3", "k3-dil2", "k5-norpb"])
    @pytest.mark.parametrize("dtype", [F32, BF16, F16], ids=DTYPE_IDS.get)
    def test_grads_match_float64_loop(self, backend, device, case, with_rpb, dtype):
        *shape, kernel_size, dilation = case
        tensors = [t for t in make_qkv(*shape, kernel_size, dtype, with_rpb=with_rpb, seed=2, device=device)
                   if t is not None]
        skip_if_backend_declines("neighborhood_attention", backend, *tensors[:3], kernel_size, dilation,
                                 tensors[3] if with_rpb else None, 1.0)
        leaves = [t.detach().clone().requires_grad_() for t in tensors]
        leaves64 = [t.detach().to("cpu", F64).requires_grad_() for t in tensors]
        gout = torch.randn(shape, dtype=F64)

        def call(fn, ts, **kw):
            q, k, v, *rest = ts
            return fn(q, k, v, kernel_size, dilation=dilation, rpb=rest[0] if rest else None, **kw)

        out = call(neighborhood_attention_2d, leaves, backend=backend)
        grads = torch.autograd.grad((out.float() * gout.float().to(device)).sum(), leaves)
        ref = call(ref_neighborhood_attention_2d, leaves64)
        ref_grads = torch.autograd.grad((ref * gout).sum(), leaves64)
        for name, leaf, g, rg in zip("qkv" + ("r" if with_rpb else ""), leaves, grads, ref_grads):
            assert g.dtype == leaf.dtype
            assert_rel_close(g, rg, GRAD_TOL[dtype], f"{backend} d{name if name != 'r' else 'rpb'}")


class TestErrors:
    def _qkv(self, *shape):
        return make_qkv(*(shape or (1, 2, 7, 8, 4)), 3, F32)

    def test_even_kernel_size(self):
        q, k, v, _ = self._qkv()
        with pytest.raises(ValueError, match=r"kernel_size must be an odd positive int, got 4"):
            neighborhood_attention_2d(q, k, v, 4)

    @pytest.mark.parametrize("kernel_size", [0, -3, 3.0, True])
    def test_bad_kernel_size(self, kernel_size):
        q, k, v, _ = self._qkv()
        with pytest.raises(ValueError, match=r"kernel_size must be an odd positive int"):
            neighborhood_attention_2d(q, k, v, kernel_size)

    @pytest.mark.parametrize("kernel_size,dilation", [(9, 1), (5, 2), (3, 3)])
    def test_window_larger_than_map(self, kernel_size, dilation):
        q, k, v, _ = self._qkv(1, 2, 7, 12, 4)
        with pytest.raises(ValueError, match=r"feature map \(7×12\) is smaller than the attention window"):
            neighborhood_attention_2d(q, k, v, kernel_size, dilation=dilation)

    def test_window_larger_than_map_width(self):
        q, k, v, _ = self._qkv(1, 2, 12, 4, 4)
        with pytest.raises(ValueError, match=r"smaller than the attention window"):
            neighborhood_attention_2d(q, k, v, 5)

    @pytest.mark.parametrize("dilation", [0, -1, 1.5])
    def test_bad_dilation(self, dilation):
        q, k, v, _ = self._qkv()
        with pytest.raises(ValueError, match=r"dilation must be an int >= 1"):
            neighborhood_attention_2d(q, k, v, 3, dilation=dilation)

    @pytest.mark.parametrize("which", ["k", "v"])
    def test_mismatched_shapes(self, which):
        q, k, v, _ = self._qkv()
        bad = torch.zeros(1, 2, 7, 8, 5)
        args = {"k": (q, bad, v), "v": (q, k, bad)}[which]
        with pytest.raises(ValueError, match=rf"{which} must have shape \(1, 2, 7, 8, 4\).*same as q"):
            neighborhood_attention_2d(*args, 3)

    @pytest.mark.parametrize("which", ["k", "v"])
    def test_mismatched_dtypes(self, which):
        q, k, v, _ = self._qkv()
        args = {"k": (q, k.to(BF16), v), "v": (q, k, v.double())}[which]
        with pytest.raises(ValueError, match=rf"share one dtype.*q: torch.float32.*{which}: torch"):
            neighborhood_attention_2d(*args, 3)

    @pytest.mark.parametrize("rpb_shape", [(2, 5, 4), (1, 5, 5), (2, 3, 3), (5, 5)])
    def test_rpb_wrong_shape(self, rpb_shape):
        q, k, v, _ = self._qkv()
        with pytest.raises(ValueError, match=r"rpb must have shape \(2, 5, 5\)"):
            neighborhood_attention_2d(q, k, v, 3, rpb=torch.zeros(rpb_shape))

    @pytest.mark.parametrize("shape", [(2, 7, 8, 4), (1, 1, 2, 7, 8, 4)])
    def test_not_5d(self, shape):
        t = torch.zeros(shape)
        with pytest.raises(ValueError, match=r"q must be \(batch, heads, H, W, head_dim\)"):
            neighborhood_attention_2d(t, t, t, 3)

    def test_integer_input(self):
        t = torch.zeros(1, 1, 5, 5, 4, dtype=torch.int64)
        with pytest.raises(ValueError, match=r"q must be a floating tensor"):
            neighborhood_attention_2d(t, t, t, 3)
