"""``segman.ops.cross_scan`` / ``cross_merge`` against explicit index formulas (docs/model.md §4.2):

    scan[k=0, h*W + w] = x[h, w]          scan[k=1, w*H + h] = x[h, w]
    scan[k=2, L-1-(h*W + w)] = x[h, w]    scan[k=3, L-1-(w*H + h)] = x[h, w]
    merge[h*W + w] = Y0[h*W+w] + Y1[w*H+h] + Y2[L-1-(h*W+w)] + Y3[L-1-(w*H+h)]

Scan is a pure copy (exact in every dtype); merge sums four values, so it is exact up to the
rounding of that sum in the input dtype.
"""
import pytest
import torch

from ops_testing import EXTENDED, backend_device_params, ref_cross_merge, ref_cross_scan
from segman.ops import cross_merge, cross_scan

SCAN_BACKEND_DEVICES = backend_device_params("cross_scan", "SCAN_BACKENDS")
MERGE_BACKEND_DEVICES = backend_device_params("cross_scan", "MERGE_BACKENDS")

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
DTYPES = [F32, BF16, F16, F64]
DTYPE_IDS = {F64: "f64", F32: "f32", BF16: "bf16", F16: "f16"}
# cross_merge: element-wise relative tolerance of a 4-term sum rounded to the dtype.
MERGE_TOL = {F64: 1e-12, F32: 1e-6, F16: 2e-3, BF16: 1.6e-2}

# (B, C, H, W): odd, non-square, single row / column.
SHAPES = [(2, 3, 5, 7), (1, 4, 6, 6), (2, 2, 1, 9), (3, 1, 8, 1), (2, 5, 4, 3)]
if EXTENDED:
    SHAPES += [(2, 16, 32, 17), (1, 96, 14, 14), (4, 8, 64, 64), (1, 3, 1, 1)]
SHAPE_ID = lambda s: "x".join(map(str, s))  # noqa: E731


def _rand(shape, dtype, device="cpu", seed=0, noncontig=False):
    gen = torch.Generator().manual_seed(seed)
    if not noncontig:
        return torch.randn(*shape, generator=gen, dtype=F64).to(dtype).to(device)
    # channels-last-like layout with a strided last dim: permuted and sliced
    perm_shape = (*shape[:-3], shape[-2], shape[-1], 2 * shape[-3])
    base = torch.randn(*perm_shape, generator=gen, dtype=F64).to(dtype).to(device)[..., ::2]
    n = len(shape)
    return base.permute(*range(n - 3), n - 1, n - 3, n - 2)


def _assert_merge_close(out, ref, dtype):
    assert out.dtype == dtype and out.shape == ref.shape
    out64 = out.detach().to("cpu", F64)
    tol = MERGE_TOL[dtype]
    torch.testing.assert_close(out64, ref, rtol=tol, atol=tol * float(ref.abs().max()))


class TestCrossScan:
    @pytest.mark.parametrize("backend,device", SCAN_BACKEND_DEVICES)
    @pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_ID)
    @pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
    def test_matches_index_formula(self, backend, device, shape, dtype):
        x = _rand(shape, dtype, device)
        out = cross_scan(x, backend=backend)
        assert out.dtype == dtype and out.device.type == device
        assert out.shape == (shape[0], 4, shape[1], shape[2] * shape[3])
        assert torch.equal(out.cpu().to(F64), ref_cross_scan(x.cpu())), "cross_scan must be an exact copy"

    @pytest.mark.parametrize("backend,device", SCAN_BACKEND_DEVICES)
    @pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 4, 6, 6)], ids=SHAPE_ID)
    @pytest.mark.parametrize("dtype", [F32, BF16], ids=DTYPE_IDS.get)
    def test_noncontiguous_input(self, backend, device, shape, dtype):
        x = _rand(shape, dtype, device, noncontig=True)
        assert not x.is_contiguous()
        out = cross_scan(x, backend=backend)
        assert torch.equal(out.cpu().to(F64), ref_cross_scan(x.cpu()))

    @pytest.mark.parametrize("backend,device", SCAN_BACKEND_DEVICES)
    def test_single_direction_definitions(self, backend, device):
        """The four directions as docs/model.md §4.2 defines them with torch ops."""
        x = _rand((2, 3, 4, 6), F32, device)
        out = cross_scan(x, backend=backend)
        row, col = x.flatten(2), x.transpose(2, 3).flatten(2)
        assert torch.equal(out[:, 0], row) and torch.equal(out[:, 1], col)
        assert torch.equal(out[:, 2], row.flip(-1)) and torch.equal(out[:, 3], col.flip(-1))


class TestCrossMerge:
    @pytest.mark.parametrize("backend,device", MERGE_BACKEND_DEVICES)
    @pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_ID)
    @pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
    def test_matches_index_formula(self, backend, device, shape, dtype):
        b, c, h, w = shape
        y = _rand((b, 4, c, h, w), dtype, device)
        out = cross_merge(y, backend=backend)
        assert out.device.type == device
        _assert_merge_close(out, ref_cross_merge(y.cpu()), dtype)

    @pytest.mark.parametrize("backend,device", MERGE_BACKEND_DEVICES)
    @pytest.mark.parametrize("dtype", [F32, BF16], ids=DTYPE_IDS.get)
    def test_noncontiguous_input(self, backend, device, dtype):
        y = _rand((2, 4, 3, 5, 7), dtype, device, noncontig=True)
        assert not y.is_contiguous()
        _assert_merge_close(cross_merge(y, backend=backend), ref_cross_merge(y.cpu()), dtype)

    @pytest.mark.parametrize("backend,device", MERGE_BACKEND_DEVICES)
    @pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_ID)
    def test_merge_of_scan_is_four_times_identity(self, backend, device, shape):
        x = _rand(shape, F64, device)
        b, c, h, w = shape
        out = cross_merge(cross_scan(x).view(b, 4, c, h, w), backend=backend)
        torch.testing.assert_close(out, 4 * x.flatten(2), rtol=0, atol=0)


class TestAdjoint:
    @pytest.mark.parametrize("scan_backend,device", SCAN_BACKEND_DEVICES)
    @pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_ID)
    def test_inner_products(self, scan_backend, device, shape):
        """<cross_scan(x), y> == <x, cross_merge(y)> in float64."""
        b, c, h, w = shape
        x = _rand(shape, F64, device, seed=1)
        y = _rand((b, 4, c, h, w), F64, device, seed=2)
        lhs = (cross_scan(x, backend=scan_backend) * y.reshape(b, 4, c, h * w)).sum()
        rhs = (x.flatten(2) * cross_merge(y)).sum()
        assert abs(float(lhs - rhs)) <= 1e-12 * max(1.0, abs(float(lhs)))

    @pytest.mark.parametrize("backend,device", SCAN_BACKEND_DEVICES)
    def test_scan_backward_is_merge(self, backend, device):
        x = _rand((2, 3, 5, 7), F64, device).requires_grad_()
        y = _rand((2, 4, 3, 5, 7), F64, device, seed=1)
        (gx,) = torch.autograd.grad(cross_scan(x, backend=backend), x, y.reshape(2, 4, 3, 35))
        torch.testing.assert_close(gx, cross_merge(y).view(2, 3, 5, 7), rtol=0, atol=1e-15)

    @pytest.mark.parametrize("backend,device", MERGE_BACKEND_DEVICES)
    def test_merge_backward_is_scan(self, backend, device):
        y = _rand((2, 4, 3, 5, 7), F64, device).requires_grad_()
        g = _rand((2, 3, 35), F64, device, seed=1)
        (gy,) = torch.autograd.grad(cross_merge(y, backend=backend), y, g)
        torch.testing.assert_close(gy, cross_scan(g.view(2, 3, 5, 7)).view(2, 4, 3, 5, 7), rtol=0, atol=0)

    @pytest.mark.parametrize("backend,device", SCAN_BACKEND_DEVICES)
    def test_gradcheck_scan(self, backend, device):
        x = _rand((2, 2, 3, 4), F64, device).requires_grad_()
        assert torch.autograd.gradcheck(lambda t: cross_scan(t, backend=backend), (x,))

    @pytest.mark.parametrize("backend,device", MERGE_BACKEND_DEVICES)
    def test_gradcheck_merge(self, backend, device):
        y = _rand((1, 4, 2, 3, 2), F64, device).requires_grad_()
        assert torch.autograd.gradcheck(lambda t: cross_merge(t, backend=backend), (y,))

    @pytest.mark.parametrize("dtype", [F32, BF16, F16], ids=DTYPE_IDS.get)
    def test_low_precision_grads(self, dtype):
        x = _rand((2, 3, 4, 5), dtype).requires_grad_()
        y = _rand((2, 4, 3, 4, 5), dtype, seed=1)
        (gx,) = torch.autograd.grad(cross_scan(x), x, y.reshape(2, 4, 3, 20))
        assert gx.dtype == dtype
        _assert_merge_close(gx.flatten(2), ref_cross_merge(y), dtype)


class TestErrors:
    @pytest.mark.parametrize("shape", [(2, 3, 5, 7), (2, 3, 4, 5, 7), (2, 4, 3, 35), (4, 3, 5, 7, 1, 1)],
                             ids=["4d", "3-directions", "flat-L", "6d"])
    def test_cross_merge_wrong_shape(self, shape):
        with pytest.raises(ValueError, match=r"cross_merge: y must be \(B, 4, C, H, W\)"):
            cross_merge(torch.zeros(shape))

    @pytest.mark.parametrize("shape", [(3, 5, 7), (2, 4, 3, 5, 7)])
    def test_cross_scan_wrong_shape(self, shape):
        with pytest.raises(ValueError, match=r"cross_scan: x must be \(B, C, H, W\)"):
            cross_scan(torch.zeros(shape))

    def test_integer_input(self):
        with pytest.raises(ValueError, match=r"x must be a floating tensor"):
            cross_scan(torch.zeros(1, 2, 3, 4, dtype=torch.int32))
        with pytest.raises(ValueError, match=r"y must be a floating tensor"):
            cross_merge(torch.zeros(1, 4, 2, 3, 4, dtype=torch.int32))
