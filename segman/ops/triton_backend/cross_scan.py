"""Triton cross-scan / cross-merge (SPEC §2.4-2.5): one pass over the map each, exact copies.

Reference (``segman/ops/torch_backend/cross_scan.py``), with the memory traffic of each line::

    rows = x.flatten(2)                          # view
    cols = x.transpose(2, 3).flatten(2)          # read x, write a transposed copy
    stack([rows, cols, rows.flip(-1), cols.flip(-1)])   # read 4 maps, write 4

The kernels read each element once and write it to its four positions (scan), or read the four
positions and write the sum once (merge).  A program owns one ``TILE_H x TILE_W`` tile of one
(batch, channel) plane; the column-major directions go through ``tl.trans`` so that their stores
(scan) or loads (merge) stay coalesced (Triton moves the tile through shared memory).  Merge adds
in fp32 and rounds once to the input dtype.

``cross_scan`` and ``cross_merge`` are each other's adjoint, so each one's backward is the other.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

TILE = 32


@triton.jit
def _cross_scan_kernel(x_ptr, out_ptr, channels, height, width,
                       sx_b, sx_c, sx_h, sx_w,
                       TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    # Each output direction is a 2-D map: out0[i, j] = x[i, j] and out2[i, j] = x[H-1-i, W-1-j]
    # as (H, W); out1[j, i] = x[i, j] and out3[j, i] = x[H-1-i, W-1-j] as (W, H).  The program
    # writes the (i, j) tile of each, so every store is contiguous; the mirrored tile is a
    # reversed load (served by L1/L2, the neighbouring program reads the same lines).
    plane = tl.program_id(0)                   # b * channels + c
    h = tl.program_id(1) * TILE_H + tl.arange(0, TILE_H)
    w = tl.program_id(2) * TILE_W + tl.arange(0, TILE_W)
    b = (plane // channels).to(tl.int64)
    c = (plane % channels).to(tl.int64)
    length = height * width
    mask = (h[:, None] < height) & (w[None, :] < width)
    x_plane = x_ptr + b * sx_b + c * sx_c
    tile = tl.load(x_plane + h[:, None] * sx_h + w[None, :] * sx_w, mask=mask)
    mirror = tl.load(x_plane + (height - 1 - h)[:, None] * sx_h + (width - 1 - w)[None, :] * sx_w, mask=mask)
    plane_len = channels.to(tl.int64) * length
    out0 = out_ptr + (b * 4 * channels + c) * length
    row = h[:, None] * width + w[None, :]                       # (TILE_H, TILE_W), contiguous in w
    tl.store(out0 + row, tile, mask=mask)
    tl.store(out0 + 2 * plane_len + row, mirror, mask=mask)
    mask_t = tl.trans(mask)
    col = w[:, None] * height + h[None, :]                      # (TILE_W, TILE_H), contiguous in h
    tl.store(out0 + plane_len + col, tl.trans(tile), mask=mask_t)
    tl.store(out0 + 3 * plane_len + col, tl.trans(mirror), mask=mask_t)


@triton.jit
def _cross_merge_kernel(y_ptr, out_ptr, channels, height, width,
                        sy_b, sy_k, sy_c,
                        TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    plane = tl.program_id(0)
    h = tl.program_id(1) * TILE_H + tl.arange(0, TILE_H)
    w = tl.program_id(2) * TILE_W + tl.arange(0, TILE_W)
    b = (plane // channels).to(tl.int64)
    c = (plane % channels).to(tl.int64)
    length = height * width
    mask = (h[:, None] < height) & (w[None, :] < width)
    mask_t = (w[:, None] < width) & (h[None, :] < height)
    y0 = y_ptr + b * sy_b + c * sy_c
    row = h[:, None] * width + w[None, :]
    col = w[:, None] * height + h[None, :]                      # (TILE_W, TILE_H)
    acc = tl.load(y0 + row, mask=mask, other=0.0).to(tl.float32)
    acc += tl.load(y0 + 2 * sy_k + (length - 1 - row), mask=mask, other=0.0).to(tl.float32)
    acc_t = tl.load(y0 + sy_k + col, mask=mask_t, other=0.0).to(tl.float32)
    acc_t += tl.load(y0 + 3 * sy_k + (length - 1 - col), mask=mask_t, other=0.0).to(tl.float32)
    acc += tl.trans(acc_t)
    tl.store(out_ptr + (b * channels + c) * length + row, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _grid(batch, channels, height, width):
    return (batch * channels, triton.cdiv(height, TILE), triton.cdiv(width, TILE))


def cross_scan_fwd(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` (any strides) → ``(B, 4, C, H*W)`` contiguous."""
    batch, channels, height, width = x.shape
    out = torch.empty(batch, 4, channels, height * width, device=x.device, dtype=x.dtype)
    if out.numel():
        _cross_scan_kernel[_grid(batch, channels, height, width)](
            x, out, channels, height, width, *x.stride(), TILE_H=TILE, TILE_W=TILE, num_warps=4)
    return out


def cross_merge_fwd(y: torch.Tensor) -> torch.Tensor:
    """``(B, 4, C, H, W)`` → ``(B, C, H*W)`` contiguous, in y's dtype (summed in fp32)."""
    batch, _, channels, height, width = y.shape
    if y.stride(4) != 1 or y.stride(3) != width:  # each direction must be one flat sequence
        y = y.contiguous()
    out = torch.empty(batch, channels, height * width, device=y.device, dtype=y.dtype)
    if out.numel():
        _cross_merge_kernel[_grid(batch, channels, height, width)](
            y, out, channels, height, width, y.stride(0), y.stride(1), y.stride(2),
            TILE_H=TILE, TILE_W=TILE, num_warps=4)
    return out


class CrossScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return cross_scan_fwd(x)

    @staticmethod
    def backward(ctx, dy):
        batch, channels, height, width = ctx.shape
        return cross_merge_fwd(dy.reshape(batch, 4, channels, height, width)).view(batch, channels, height, width)


class CrossMergeFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y):
        ctx.shape = y.shape
        return cross_merge_fwd(y)

    @staticmethod
    def backward(ctx, dx):
        batch, _, channels, height, width = ctx.shape
        return cross_scan_fwd(dx.reshape(batch, channels, height, width)).view(batch, 4, channels, height, width)


def can_run(x: torch.Tensor) -> Optional[str]:
    if x.device.type != "cuda":
        return f"inputs are on {x.device.type}"
    if x.dtype == torch.float64:
        return "float64 is not supported (float32/float16/bfloat16 only)"
    return None


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B, 4, C, L)``."""
    return CrossScanFn.apply(x)


def cross_merge(y: torch.Tensor) -> torch.Tensor:
    """``(B, 4, C, H, W)`` → ``(B, C, L)``."""
    return CrossMergeFn.apply(y)
