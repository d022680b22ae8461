"""Reference 2-D neighborhood attention with RPB, as tiled matrix products (exact, CPU and GPU).

Queries are grouped in ``t_h × t_w`` tiles.  All windows of a tile lie inside one key region of
``(t_h + K - 1) × (t_w + K - 1)`` pixels (windows shift inwards at the borders, so the region is
clamped the same way), so each tile is one dense ``Q_tile @ K_regionᵀ`` product.  Keys outside a
query's window get ``-inf`` through a cached per-shape index into ``[rpb | -inf]``, which also
yields the relative position bias.  Memory is ``O(B*heads*H*W*R)`` with ``R`` the region size,
never ``(H*W)²``.  Dilation ``d > 1`` splits the map into its ``d × d`` dilation groups, each an
ordinary neighborhood attention on its sub-map (NATTEN's rule).

Computation is in float32 (float64 for float64 inputs); the output has the input dtype.  The
backward recomputes the probabilities instead of keeping them (``K²`` floats per query).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional

import torch

QUERY_TILE = 8


class AxisTiling(NamedTuple):
    """Tiling of one axis of length ``length`` for kernel ``K``."""
    tile: int              # queries per tile
    n_tiles: int
    key_pos: torch.Tensor  # (n_tiles, tile + K - 1) key positions of each tile's region
    bias_idx: torch.Tensor  # (n_tiles, tile, tile + K - 1) rpb index (key - query + K - 1), -1 outside the window


def _axis_tiling(length: int, kernel_size: int, device: torch.device) -> AxisTiling:
    # An axis no longer than one tile's region is a single tile: every window lies inside it.
    tile = length if length <= QUERY_TILE + kernel_size - 1 else QUERY_TILE
    n_tiles = math.ceil(length / tile)
    region = min(tile + kernel_size - 1, length)
    starts = torch.arange(n_tiles, device=device) * tile
    region_start = (starts - kernel_size // 2).clamp(0, length - region)
    key_pos = region_start[:, None] + torch.arange(region, device=device)
    # padded queries (past the end) reuse the last query's window; their outputs are discarded
    query_pos = (starts[:, None] + torch.arange(tile, device=device)).clamp(max=length - 1)
    window_start = (query_pos - kernel_size // 2).clamp(0, length - kernel_size)
    offset = key_pos[:, None, :] - window_start[:, :, None]
    inside = (offset >= 0) & (offset < kernel_size)
    bias_idx = torch.where(inside, key_pos[:, None, :] - query_pos[:, :, None] + kernel_size - 1, -1)
    return AxisTiling(tile, n_tiles, key_pos, bias_idx)


def _tiling(height: int, width: int, kernel_size: int, device: torch.device):
    """Row and column tilings plus the flat index ``(n_th, n_tw, t_h*t_w, R)`` into ``[rpb.flatten() | -inf]``;
    cached per shape, except while traced (export), where the tensors are graph values that must not be kept."""
    if torch.compiler.is_compiling():
        return _build_tiling(height, width, kernel_size, device)
    return _cached_tiling(height, width, kernel_size, device)


def _build_tiling(height: int, width: int, kernel_size: int, device: torch.device):
    rows = _axis_tiling(height, kernel_size, device)
    cols = _axis_tiling(width, kernel_size, device)
    span = 2 * kernel_size - 1
    r = rows.bias_idx[:, None, :, None, :, None]
    c = cols.bias_idx[None, :, None, :, None, :]
    flat = torch.where((r >= 0) & (c >= 0), r * span + c, span * span)
    flat = flat.reshape(rows.n_tiles, cols.n_tiles, rows.tile * cols.tile, -1)
    return rows, cols, flat


_cached_tiling = functools.lru_cache(maxsize=64)(_build_tiling)


def _to_tiles(x: torch.Tensor, rows: AxisTiling, cols: AxisTiling) -> torch.Tensor:
    """``(B, n, H, W, d)`` → ``(B, n, n_th, n_tw, t_h*t_w, d)``, zero-padded past the map."""
    b, n, h, w, d = x.shape
    x = torch.nn.functional.pad(x, (0, 0, 0, cols.n_tiles * cols.tile - w, 0, rows.n_tiles * rows.tile - h))
    x = x.view(b, n, rows.n_tiles, rows.tile, cols.n_tiles, cols.tile, d).transpose(3, 4)
    return x.reshape(b, n, rows.n_tiles, cols.n_tiles, rows.tile * cols.tile, d)


def _from_tiles(x: torch.Tensor, rows: AxisTiling, cols: AxisTiling, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`_to_tiles` (padding dropped)."""
    b, n, _, _, _, d = x.shape
    x = x.view(b, n, rows.n_tiles, cols.n_tiles, rows.tile, cols.tile, d).transpose(3, 4)
    return x.reshape(b, n, rows.n_tiles * rows.tile, cols.n_tiles * cols.tile, d)[:, :, :height, :width]


def _to_regions(x: torch.Tensor, rows: AxisTiling, cols: AxisTiling) -> torch.Tensor:
    """``(B, n, H, W, d)`` → each tile's key region ``(B, n, n_th, n_tw, R, d)`` (a gather)."""
    b, n, _, _, d = x.shape
    rh, rw = rows.key_pos.shape[1], cols.key_pos.shape[1]
    x = x.index_select(2, rows.key_pos.flatten()).index_select(3, cols.key_pos.flatten())
    x = x.view(b, n, rows.n_tiles, rh, cols.n_tiles, rw, d).transpose(3, 4)
    return x.reshape(b, n, rows.n_tiles, cols.n_tiles, rh * rw, d)


def _from_regions(x: torch.Tensor, rows: AxisTiling, cols: AxisTiling, height: int, width: int) -> torch.Tensor:
    """Adjoint of :func:`_to_regions`: sums region entries back onto ``(B, n, H, W, d)``."""
    b, n, _, _, _, d = x.shape
    rh, rw = rows.key_pos.shape[1], cols.key_pos.shape[1]
    x = x.view(b, n, rows.n_tiles, cols.n_tiles, rh, rw, d).transpose(3, 4)
    x = x.reshape(b, n, rows.n_tiles * rh, cols.n_tiles * rw, d)
    per_row = x.new_zeros(b, n, rows.n_tiles * rh, width, d).index_add_(3, cols.key_pos.flatten(), x)
    return x.new_zeros(b, n, height, width, d).index_add_(2, rows.key_pos.flatten(), per_row)


def _bias(rpb: Optional[torch.Tensor], heads: int, kernel_size: int, flat: torch.Tensor, dtype) -> torch.Tensor:
    """``(heads, n_th, n_tw, t_h*t_w, R)``: rpb inside each window, -inf outside."""
    span = 2 * kernel_size - 1
    table = torch.zeros(heads, span * span, dtype=dtype, device=flat.device) if rpb is None \
        else rpb.to(dtype).flatten(1)
    table = torch.cat([table, table.new_full((heads, 1), float("-inf"))], dim=1)
    return table[:, flat]


def _tiled(q, k, v, kernel_size: int, rpb: Optional[torch.Tensor], scale: float):
    """Tiling, per-tile queries, key and value regions (compute dtype) and the logits."""
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    _, n, h, w, _ = q.shape
    rows, cols, flat = _tiling(h, w, kernel_size, q.device)
    q_t = _to_tiles(q.to(dtype), rows, cols)
    k_r = _to_regions(k.to(dtype), rows, cols)
    v_r = _to_regions(v.to(dtype), rows, cols)
    logits = torch.matmul(q_t, k_r.transpose(-1, -2)).mul_(scale).add_(_bias(rpb, n, kernel_size, flat, dtype))
    return (rows, cols, flat), q_t, k_r, v_r, logits


def _forward(q, k, v, kernel_size: int, rpb: Optional[torch.Tensor], scale: float, export: bool = False):
    """Dilation 1: ``(out, lse)``; with ``export`` ``(out, None)``, the probabilities from one softmax,
    which ONNX runtimes run as one fused operator."""
    (rows, cols, _), _, _, v_r, logits = _tiled(q, k, v, kernel_size, rpb, scale)
    _, _, h, w, _ = q.shape
    if export:
        return _from_tiles(torch.matmul(torch.softmax(logits, dim=-1), v_r), rows, cols, h, w).to(q.dtype), None
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    out = _from_tiles(torch.matmul(torch.exp(logits - lse), v_r), rows, cols, h, w)  # softmax from lse
    return out.to(q.dtype), _from_tiles(lse, rows, cols, h, w)[..., 0]


def _backward(q, k, v, kernel_size: int, rpb: Optional[torch.Tensor], scale: float, dout, rpb_grad: bool):
    """Dilation 1: ``(dq, dk, dv, d_rpb)``; the probabilities are recomputed."""
    (rows, cols, flat), q_t, k_r, v_r, logits = _tiled(q, k, v, kernel_size, rpb, scale)
    _, n, h, w, _ = q.shape
    attn = torch.softmax(logits, dim=-1)
    dout_t = _to_tiles(dout.to(attn.dtype), rows, cols)
    dattn = torch.matmul(dout_t, v_r.transpose(-1, -2))
    dlogits = attn * (dattn - (attn * dattn).sum(-1, keepdim=True))   # softmax backward
    dq = _from_tiles(torch.matmul(dlogits, k_r), rows, cols, h, w).mul_(scale)
    dk = _from_regions(torch.matmul(dlogits.transpose(-1, -2), q_t), rows, cols, h, w).mul_(scale)
    dv = _from_regions(torch.matmul(attn.transpose(-1, -2), dout_t), rows, cols, h, w)
    drpb = None
    if rpb_grad:  # adjoint of the bias gather, summed over the batch; the -inf slot is dropped
        span = 2 * kernel_size - 1
        drpb = dlogits.new_zeros(n, span * span + 1)
        drpb.index_add_(1, flat.flatten(), dlogits.sum(0).reshape(n, -1))
        drpb = drpb[:, :-1].view(n, span, span).to(rpb.dtype)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), drpb


def _groups(dilation: int):
    """Index of each dilation group of a ``(B, n, H, W, ...)`` map (NATTEN's rule: every ``dilation``-th pixel)."""
    return [(slice(None), slice(None), slice(gr, None, dilation), slice(gc, None, dilation))
            for gr in range(dilation) for gc in range(dilation)]


def forward(q, k, v, kernel_size: int, dilation: int, rpb: Optional[torch.Tensor], scale: float,
            export: bool = False):
    """Validated inputs in; ``(B, heads, H, W, head_dim)`` and the log-sum-exp ``(B, heads, H, W)`` out.
    ``export``: the form ``torch.onnx.export`` traces, which returns no log-sum-exp (None)."""
    if dilation == 1:
        return _forward(q, k, v, kernel_size, rpb, scale, export)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = None if export else torch.empty(q.shape[:4], dtype=torch.float64 if q.dtype == torch.float64
                                          else torch.float32, device=q.device)
    for group in _groups(dilation):
        out[group], group_lse = _forward(q[group], k[group], v[group], kernel_size, rpb, scale, export)
        if lse is not None:
            lse[group] = group_lse
    return out, lse


def backward(q, k, v, kernel_size: int, dilation: int, rpb: Optional[torch.Tensor], scale: float,
             out: torch.Tensor, lse: torch.Tensor, dout: torch.Tensor, rpb_grad: bool):
    """``(dq, dk, dv, d_rpb)``; ``d_rpb`` is None unless ``rpb_grad``."""
    if dilation == 1:
        return _backward(q, k, v, kernel_size, rpb, scale, dout, rpb_grad)
    dq, dk, dv = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
    drpb = torch.zeros_like(rpb) if rpb_grad else None
    for group in _groups(dilation):
        dq[group], dk[group], dv[group], part = _backward(q[group], k[group], v[group], kernel_size, rpb, scale,
                                                          dout[group], rpb_grad)
        if rpb_grad:
            drpb += part
    return dq, dk, dv, drpb
