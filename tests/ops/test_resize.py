"""``segman.ops.bilinear_resize`` against a float64 loop over output pixels, values and gradients.

The reference computes each output pixel from its two source rows and columns with PyTorch's
source-index rule (``align_corners=False``: ``src = max((o + 0.5) · in/out − 0.5, 0)``; ``True``:
``src = o · (in − 1)/(out − 1)``); its gradient comes from autograd through the loop.  The forward
must equal ``F.interpolate`` bit for bit; the backward (matrix products) must match the reference
within the dtype's rounding, and on a GPU in bf16 come out no worse than PyTorch's own backward.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ops_testing import assert_rel_close, rel_l2
from segman.ops import bilinear_resize
from segman.ops.resize import interpolation_matrix

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
DTYPE_IDS = {F64: "f64", F32: "f32", BF16: "bf16", F16: "f16"}
TOL = {F64: 1e-12, F32: 1e-6, BF16: 1.5e-2, F16: 2e-3}
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                reason="CUDA is not available"))]
# (input H, W) → (output H, W): 8× (SegMAN's logits to the label), non-integer, mixed, shrinking, 1 px
CASES = [((5, 4), (40, 32)), ((7, 5), (13, 22)), ((9, 6), (4, 17)), ((1, 3), (5, 6)), ((6, 6), (6, 6))]
CASE_ID = lambda c: f"{c[0][0]}x{c[0][1]}-{c[1][0]}x{c[1][1]}"  # noqa: E731


def _source(o: int, n_in: int, n_out: int, align_corners: bool) -> tuple[int, int, float]:
    """(i0, i1, weight of i1) of output index ``o``."""
    if align_corners:
        src = o * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    else:
        src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
    i0 = min(int(src), n_in - 1)
    return i0, min(i0 + 1, n_in - 1), src - i0


def ref_resize(x: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """Float64 loop over output pixels (vectorised over batch and channels), differentiable."""
    (height, width), (out_h, out_w) = x.shape[-2:], size
    rows = []
    for oy in range(out_h):
        y0, y1, ly = _source(oy, height, out_h, align_corners)
        row = []
        for ox in range(out_w):
            x0, x1, lx = _source(ox, width, out_w, align_corners)
            row.append((1 - ly) * ((1 - lx) * x[..., y0, x0] + lx * x[..., y0, x1])
                       + ly * ((1 - lx) * x[..., y1, x0] + lx * x[..., y1, x1]))
        rows.append(torch.stack(row, -1))
    return torch.stack(rows, -2)


def _inputs(shape, dtype, device, seed, noncontig=False):
    gen = torch.Generator().manual_seed(seed)
    if noncontig:  # channels-last storage, every other channel
        base = torch.randn(shape[0], *shape[2:], 2 * shape[1], generator=gen, dtype=F64)[..., ::2]
        x = base.permute(0, 3, 1, 2)
    else:
        x = torch.randn(*shape, generator=gen, dtype=F64)
    return x.to(dtype).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=CASE_ID)
@pytest.mark.parametrize("align_corners", [False, True], ids=["ac0", "ac1"])
@pytest.mark.parametrize("dtype", [F64, F32, BF16, F16], ids=DTYPE_IDS.get)
def test_values_and_gradient(device, case, align_corners, dtype):
    (height, width), size = case
    x = _inputs((2, 3, height, width), dtype, device, seed=1, noncontig=dtype == F32).requires_grad_()
    grad = _inputs((2, 3, *size), dtype, device, seed=2)
    out = bilinear_resize(x, size, align_corners)
    assert torch.equal(out, F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners))
    (grad_x,) = torch.autograd.grad(out, x, grad)
    x64 = x.detach().to("cpu", F64).requires_grad_()
    (ref,) = torch.autograd.grad(ref_resize(x64, size, align_corners), x64, grad.to("cpu", F64))
    assert grad_x.dtype == dtype and grad_x.shape == x.shape
    assert_rel_close(grad_x, ref, TOL[dtype], "grad_x")


@pytest.mark.parametrize("device", DEVICES)
def test_logits_8x_in_bf16_no_worse_than_pytorch(device):
    """SegMAN's case: 150-class logits at 1/8 resized to the label, gradient in bf16."""
    x = _inputs((2, 150, 16, 12), BF16, device, seed=3).requires_grad_()
    grad = _inputs((2, 150, 128, 96), BF16, device, seed=4)
    x64 = x.detach().to("cpu", F64).requires_grad_()
    (ref,) = torch.autograd.grad(ref_resize(x64, (128, 96), False), x64, grad.to("cpu", F64))
    (ours,) = torch.autograd.grad(bilinear_resize(x, (128, 96)), x, grad)
    (theirs,) = torch.autograd.grad(F.interpolate(x, size=(128, 96), mode="bilinear"), x, grad)
    assert rel_l2(ours, ref) <= 1.5 * rel_l2(theirs, ref) + 1e-6, (rel_l2(ours, ref), rel_l2(theirs, ref))


def test_interpolation_matrix_rows_are_weights():
    a = interpolation_matrix(7, 20, False, torch.device("cpu"), F64)
    assert a.shape == (20, 7) and (a >= 0).all()
    torch.testing.assert_close(a.sum(1), torch.ones(20, dtype=F64))
    assert ((a > 0).sum(1) <= 2).all()


def test_without_grad_it_is_plain_interpolate():
    x = torch.randn(1, 2, 4, 4)
    with torch.no_grad():
        out = bilinear_resize(x.requires_grad_(), (8, 8))
    assert out.grad_fn is None and torch.equal(out, F.interpolate(x, size=(8, 8), mode="bilinear"))


def test_compiles_without_graph_breaks():
    x = torch.randn(2, 3, 5, 4, requires_grad=True)

    def loss(x):
        return bilinear_resize(x.bfloat16(), (40, 32)).float().square().sum()

    explained = torch._dynamo.explain(loss)(x)
    assert explained.graph_break_count == 0, explained.break_reasons


@pytest.mark.parametrize("x,size,match", [
    (torch.zeros(1, 1, 4, 4, dtype=torch.long), (8, 8), "floating"),
    (torch.zeros(1, 4, 4), (8, 8), r"\(B, C, H, W\)"),
    (torch.zeros(1, 1, 4, 4), (8,), "two positive sides"),
    (torch.zeros(1, 1, 4, 4), (0, 8), "two positive sides"),
])
def test_bad_inputs_are_named(x, size, match):
    with pytest.raises(ValueError, match=match):
        bilinear_resize(x, size)
