"""Triton cross-scan / cross-merge (docs/model.md §4.2): one pass over the map each, exact copies.

Reference (``segman/ops/torch_backend/cross_scan.py``), with the memory traffic of each line::

    rows = x.flatten(2)                          # view
    cols = x.transpose(2, 3).flatten(2)          # read x, write a transposed copy
    stack([rows, cols, rows.flip(-1), cols.flip(-1)])   # read 4 maps, write 4

The kernels read each element once and write it to its four positions (scan), or read the four
positions and write the sum once (merge).  A program owns one ``TILE x TILE`` tile of one
(batch, channel) plane.  Every global access runs forwards along the contiguous axis, so that it is
vectorised: the column-major directions go through ``tl.trans`` (Triton moves the tile through
shared memory), and the reversed directions take their tile at the mirrored position, whose rows run
backwards in memory, and reverse it in registers with ``tl.flip`` (exact: a bit-level permutation).
Merge adds in fp32 and rounds once to the input dtype.

``cross_scan`` and ``cross_merge`` are each other's adjoint, so each one's backward is the other.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl


@triton.jit
def _mirror(i0, size, TILE: tl.constexpr):
    """Indices ``size - i0 - TILE ..< size - i0``: the mirror images of ``i0 ..< i0 + TILE`` in reverse
    order (``< 0`` where the tile runs past the map), so ``flip`` of a block loaded there lines up."""
    return size - i0 - TILE + tl.arange(0, TILE)


@triton.jit
def _program_tile(channels, height, width, TILE: tl.constexpr):
    """This program's tile: batch ``b`` and channel ``c`` (int64) of its plane, its first row ``i0`` and
    column ``j0``, map rows ``h`` and columns ``w`` ``[TILE]`` (inside the map where ``h_ok``, ``w_ok``;
    ``mask``: both, ``[TILE, TILE]``)."""
    plane = tl.program_id(0)                   # b * channels + c
    i0 = tl.program_id(1) * TILE
    j0 = tl.program_id(2) * TILE
    h = i0 + tl.arange(0, TILE)
    w = j0 + tl.arange(0, TILE)
    b = (plane // channels).to(tl.int64)
    c = (plane % channels).to(tl.int64)
    h_ok = h < height
    w_ok = w < width
    return b, c, i0, j0, h, w, h_ok, w_ok, h_ok[:, None] & w_ok[None, :]


@triton.jit
def _cross_scan_kernel(x_ptr, out_ptr, channels, height, width,
                       sx_b, sx_c, sx_h, sx_w,
                       TILE: tl.constexpr):
    # Pixel (i, j) goes to row-major position (i, j) of out0 and, mirrored, (H-1-i, W-1-j) of
    # out2 (both viewed as (H, W)); to (j, i) of out1 and (W-1-j, H-1-i) of out3 (viewed as (W, H)).
    b, c, i0, j0, h, w, h_ok, w_ok, mask = _program_tile(channels, height, width, TILE)
    length = height * width
    tile = tl.load(x_ptr + b * sx_b + c * sx_c + h[:, None] * sx_h + w[None, :] * sx_w, mask=mask)
    tile_t = tl.trans(tile)                                     # [w, h]: out1, out3
    plane_len = channels.to(tl.int64) * length
    out0 = out_ptr + (b * 4 * channels + c) * length
    tl.store(out0 + h[:, None] * width + w[None, :], tile, mask=mask)
    tl.store(out0 + plane_len + w[:, None] * height + h[None, :], tile_t, mask=tl.trans(mask))
    w_mirror = _mirror(j0, width, TILE)
    h_mirror = _mirror(i0, height, TILE)
    tl.store(out0 + 2 * plane_len + (height - 1 - h)[:, None] * width + w_mirror[None, :], tl.flip(tile, 1),
             mask=h_ok[:, None] & (w_mirror >= 0)[None, :])
    tl.store(out0 + 3 * plane_len + (width - 1 - w)[:, None] * height + h_mirror[None, :], tl.flip(tile_t, 1),
             mask=w_ok[:, None] & (h_mirror >= 0)[None, :])


@triton.jit
def _cross_merge_kernel(y_ptr, out_ptr, channels, height, width,
                        sy_b, sy_k, sy_c,
                        TILE: tl.constexpr):
    b, c, i0, j0, h, w, h_ok, w_ok, mask = _program_tile(channels, height, width, TILE)
    length = height * width
    y0 = y_ptr + b * sy_b + c * sy_c
    row = h[:, None] * width + w[None, :]
    w_mirror = _mirror(j0, width, TILE)
    h_mirror = _mirror(i0, height, TILE)
    acc = tl.load(y0 + row, mask=mask, other=0.0).to(tl.float32)
    rev = tl.load(y0 + 2 * sy_k + (height - 1 - h)[:, None] * width + w_mirror[None, :],
                  mask=h_ok[:, None] & (w_mirror >= 0)[None, :], other=0.0)
    acc += tl.flip(rev, 1).to(tl.float32)
    acc_t = tl.load(y0 + sy_k + w[:, None] * height + h[None, :], mask=tl.trans(mask), other=0.0).to(tl.float32)
    rev_t = tl.load(y0 + 3 * sy_k + (width - 1 - w)[:, None] * height + h_mirror[None, :],
                    mask=w_ok[:, None] & (h_mirror >= 0)[None, :], other=0.0)
    acc_t += tl.flip(rev_t, 1).to(tl.float32)
    acc += tl.trans(acc_t)
    tl.store(out_ptr + (b * channels + c) * length + row, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _launch(kernel, t: torch.Tensor, out: torch.Tensor, batch: int, channels: int, height: int, width: int,
            strides: tuple) -> None:
    """64 × 64 tiles, or 32 × 32 on maps narrower than 64 (measured on an H100: docs/performance.md)."""
    tile = 64 if min(height, width) >= 64 else 32
    grid = (batch * channels, triton.cdiv(height, tile), triton.cdiv(width, tile))
    kernel[grid](t, out, channels, height, width, *strides, TILE=tile, num_warps=4)


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` (any strides) → ``(B, 4, C, H*W)`` contiguous."""
    batch, channels, height, width = x.shape
    out = torch.empty(batch, 4, channels, height * width, device=x.device, dtype=x.dtype)
    if out.numel():
        _launch(_cross_scan_kernel, x, out, batch, channels, height, width, x.stride())
    return out


def cross_merge(y: torch.Tensor) -> torch.Tensor:
    """``(B, 4, C, H, W)`` → ``(B, C, H*W)`` contiguous, in y's dtype (summed in fp32)."""
    batch, _, channels, height, width = y.shape
    if y.stride(4) != 1 or y.stride(3) != width:  # each direction must be one flat sequence
        y = y.contiguous()
    out = torch.empty(batch, channels, height * width, device=y.device, dtype=y.dtype)
    if out.numel():
        _launch(_cross_merge_kernel, y, out, batch, channels, height, width, y.stride()[:3])
    return out


def can_run(x: torch.Tensor) -> Optional[str]:
    if x.device.type != "cuda":
        return f"inputs are on {x.device.type}"
    if x.dtype == torch.float64:
        return "float64 is not supported (float32/float16/bfloat16 only)"
    return None

