"""The ``torch.library`` custom ops (``segman.ops.library``): ``torch.library.opcheck`` (schema, fake
implementation, autograd registration, AOT dispatch) for every op on every backend that can run here,
on random inputs with odd sizes, batch > 1 and non-contiguous views."""
import pytest
import torch

from ops_testing import backend_device_params, skip_if_backend_declines
from segman.ops import library


def _strided(t: torch.Tensor) -> torch.Tensor:
    """The same values as a non-contiguous view (every other element of a twice-as-wide buffer)."""
    wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    wide[..., ::2] = t.detach()
    return wide[..., ::2].requires_grad_(t.requires_grad)


def _leaf(*shape, device, dtype, scale=1.0, shift=0.0):
    return (torch.randn(*shape, device=device, dtype=dtype) * scale + shift).requires_grad_()


def _dtype(backend):
    return torch.float64 if backend == "torch" else torch.float32


def _scan_args(backend, device, optional):
    dtype = _dtype(backend)
    batch, groups, dg, n_state, length = 2, 4, 3, 2, 37
    channels = groups * dg
    return (_strided(_leaf(batch, channels, length, device=device, dtype=dtype)),
            _leaf(batch, channels, length, device=device, dtype=dtype, scale=0.5, shift=-0.5),
            (-torch.rand(channels, n_state, device=device, dtype=dtype) - 0.1).requires_grad_(),
            _leaf(batch, groups, n_state, length, device=device, dtype=dtype),
            _strided(_leaf(batch, groups, n_state, length, device=device, dtype=dtype)),
            _leaf(channels, device=device, dtype=dtype) if optional else None,
            _leaf(channels, device=device, dtype=dtype) if optional else None,
            optional, backend)


@pytest.mark.parametrize("optional", [True, False], ids=["D-bias-softplus", "plain"])
@pytest.mark.parametrize("backend,device", backend_device_params("selective_scan"))
def test_selective_scan(backend, device, optional):
    args = _scan_args(backend, device, optional)
    skip_if_backend_declines("selective_scan", backend, *args[:8])
    torch.library.opcheck(library.selective_scan_op, args)


@pytest.mark.parametrize("backend,device", backend_device_params("ss2d", "BACKENDS"))
def test_ss2d_scan(backend, device):
    if backend not in library.KERNEL_MODULES["ss2d_scan"]:
        pytest.skip(f"ss2d_scan's {backend!r} backend composes the other ops (tested there)")
    batch, channels, height, width = 2, 3, 5, 7
    dtype = _dtype(backend)
    args = (_leaf(batch, channels, height, width, device=device, dtype=dtype),
            _leaf(batch, 4 * channels, height * width, device=device, dtype=dtype, scale=0.5, shift=-0.5),
            (-torch.rand(4 * channels, 1, device=device, dtype=dtype) - 0.1).requires_grad_(),
            _leaf(batch, 4, 1, height * width, device=device, dtype=dtype),
            _leaf(batch, 4, 1, height * width, device=device, dtype=dtype),
            _leaf(4 * channels, device=device, dtype=dtype), _leaf(4 * channels, device=device, dtype=dtype),
            True, backend)
    torch.library.opcheck(library.ss2d_scan_op, args)


@pytest.mark.parametrize("backend,device", backend_device_params("cross_scan", "SCAN_BACKENDS"))
def test_cross_scan_and_merge(backend, device):
    dtype = _dtype(backend)
    x = _strided(_leaf(2, 3, 5, 7, device=device, dtype=dtype))
    torch.library.opcheck(library.cross_scan_op, (x, backend))
    y = _leaf(2, 4, 3, 5, 7, device=device, dtype=dtype)
    torch.library.opcheck(library.cross_merge_op, (y, backend))


@pytest.mark.parametrize("dilation,with_rpb", [(1, True), (1, False), (2, True)], ids=["rpb", "no-rpb", "dilated"])
@pytest.mark.parametrize("backend,device", backend_device_params("neighborhood_attention"))
def test_neighborhood_attention(backend, device, dilation, with_rpb):
    if backend == "natten" and with_rpb:
        pytest.skip("natten takes no relative position bias")
    if backend == "triton" and dilation > 1:
        pytest.skip("the triton backend takes dilation 1 only")
    dtype = _dtype(backend)
    batch, heads, height, width, head_dim, kernel_size = 2, 2, 9, 11, 8, 3
    q, k, v = (_leaf(batch, heads, height, width, head_dim, device=device, dtype=dtype) for _ in range(3))
    rpb = _leaf(heads, 2 * kernel_size - 1, 2 * kernel_size - 1, device=device, dtype=dtype) if with_rpb else None
    args = (_strided(q), k, v, kernel_size, dilation, rpb, head_dim ** -0.5, backend)
    skip_if_backend_declines("neighborhood_attention", backend, *args[:7])
    torch.library.opcheck(library.neighborhood_attention_2d_op, args)


def test_unknown_kernels_name_the_op():
    with pytest.raises(ValueError, match=r"segman::ss2d_scan has no kernels for backend 'torch'"):
        library.kernels("ss2d_scan", "torch")
