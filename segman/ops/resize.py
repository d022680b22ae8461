"""Bilinear resize of ``(B, C, H, W)`` maps with a fast backward.

The forward is exactly ``F.interpolate(x, size, mode="bilinear", align_corners=...)``.  PyTorch's
backward scatters each output gradient into its four source pixels with atomic adds; when logits are
upsampled 8× to the label (SegMAN's stride-8 logits, a 512² crop) about 256 adds land on every source
value, which on a GPU is slower than the rest of the loss (and in bf16 every add rounds).  Bilinear
resizing is separable, ``out = A_h · x · A_wᵀ`` per channel with ``A`` the 1-D interpolation
matrices, so the gradient is ``A_hᵀ · g · A_w``: two batched matrix products, accumulated in float32
by the matrix units, computed here in the gradient's dtype when the matrices are exact in it (the
weights of integer up-scaling are multiples of 1/16) and in float32 otherwise.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ._checks import check_float


def interpolation_matrix(n_in: int, n_out: int, align_corners: bool, device: torch.device,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(n_out, n_in)`` ``A`` with ``linear_resize(v) = A @ v`` for a length-``n_in`` vector ``v``, built
    by resizing the unit vectors with PyTorch itself (so the weights are exactly its own)."""
    eye = torch.eye(n_in, device=device, dtype=dtype).unsqueeze(0)  # channel i holds e_i
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=align_corners)[0].t()


@torch.compiler.assume_constant_result  # a fact about two sizes: compiled code needs no data check
def _weights_exact_in(dtype: torch.dtype, n_in: int, n_out: int, align_corners: bool) -> bool:
    a = interpolation_matrix(n_in, n_out, align_corners, torch.device("cpu"))
    return torch.equal(a.to(dtype).float(), a)


def _matmul_dtype(grad: torch.Tensor, in_size: tuple[int, int], align_corners: bool) -> torch.dtype:
    """The gradient's own dtype where every interpolation weight is exact in it, else float32."""
    if grad.dtype in (torch.float32, torch.float64) or all(
            _weights_exact_in(grad.dtype, n_in, n_out, align_corners) for n_in, n_out in zip(in_size, grad.shape[-2:])):
        return grad.dtype
    return torch.float32


class _BilinearResize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
        ctx.in_size, ctx.align_corners = tuple(x.shape[-2:]), align_corners
        return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (height, width), (out_height, out_width) = ctx.in_size, grad.shape[-2:]
        weights = torch.float64 if grad.dtype == torch.float64 else torch.float32  # as F.interpolate's
        a_h = interpolation_matrix(height, out_height, ctx.align_corners, grad.device, weights)  # (H', H)
        a_w = interpolation_matrix(width, out_width, ctx.align_corners, grad.device, weights)    # (W', W)
        dtype = _matmul_dtype(grad, ctx.in_size, ctx.align_corners)
        with torch.autocast(grad.device.type, enabled=False):
            # (H, H') @ (B, C, H', W') @ (W', W): the narrow product first
            grad_x = a_h.t().to(dtype) @ (grad.to(dtype) @ a_w.to(dtype))
        return grad_x.to(grad.dtype), None, None


def bilinear_resize(x: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B, C, *size)``, equal to ``F.interpolate(x, size, mode="bilinear",
    align_corners=align_corners)``; its gradient is computed by matrix products (module docstring)."""
    check_float("x", x)
    if x.dim() != 4:
        raise ValueError(f"bilinear_resize: x must be (B, C, H, W), got shape {tuple(x.shape)}")
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"bilinear_resize: size must be two positive sides (H, W), got {size}")
    if not (torch.is_grad_enabled() and x.requires_grad) or torch.onnx.is_in_onnx_export():
        return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)
    return _BilinearResize.apply(x, size, align_corners)
