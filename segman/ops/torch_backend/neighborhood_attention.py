"""Reference 2-D neighborhood attention with RPB: vectorised gathers, explicit backward.

Memory stays at ``O(B*heads*H*W*(K² + K*head_dim))``: the loops run over the ``K`` window rows,
and each step gathers one ``(B, heads, H, W, K, head_dim)`` slab of keys or values.  The
attention probabilities ``(B, heads, H, W, K, K)`` are saved for backward.  Computation is in
float32 (float64 for float64 inputs); the output is cast back to the input dtype.
"""
from __future__ import annotations

from typing import Optional

import torch


def window_indices(length: int, kernel_size: int, dilation: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Key index ``(length, K)`` and bias index ``(length, K)`` along one axis (NATTEN's rule)."""
    pos = torch.arange(length, device=device)
    group, local = pos % dilation, pos // dilation
    group_len = (length - group + dilation - 1) // dilation
    start = torch.minimum((local - kernel_size // 2).clamp(min=0), group_len - kernel_size)
    offsets = torch.arange(kernel_size, device=device)
    key = group[:, None] + dilation * (start[:, None] + offsets)
    bias = start[:, None] + offsets - local[:, None] + kernel_size - 1
    return key, bias


def _gather_window(x: torch.Tensor, row_index: torch.Tensor, col_index: torch.Tensor) -> torch.Tensor:
    """x ``(B, n, H, W, d)``, rows ``(H,)``, cols ``(W, K)`` → ``x[:, :, rows[i], cols[j, b]]`` as ``(B, n, H, W, K, d)``."""
    b, n, _, w, d = x.shape
    rows = x.index_select(2, row_index)
    return rows.index_select(3, col_index.flatten()).view(b, n, row_index.numel(), w, -1, d)


def _scatter_window(target: torch.Tensor, values: torch.Tensor, row_index: torch.Tensor,
                    col_index: torch.Tensor) -> None:
    """Adjoint of :func:`_gather_window`: ``target[:, :, rows[i], cols[j, b]] += values[:, :, i, j, b]``."""
    b, n, h, w, kk, d = values.shape
    rows = torch.zeros(b, n, h, target.shape[3], d, dtype=values.dtype, device=values.device)
    rows.index_add_(3, col_index.flatten(), values.reshape(b, n, h, w * kk, d))
    target.index_add_(2, row_index, rows)


class NeighborhoodAttention2DFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, kernel_size: int, dilation: int, rpb: Optional[torch.Tensor], scale: float):
        dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        b, n, h, w, d = q.shape
        kr, br = window_indices(h, kernel_size, dilation, q.device)
        kc, bc = window_indices(w, kernel_size, dilation, q.device)
        qf, kf, vf = q.to(dtype), k.to(dtype), v.to(dtype)
        logits = torch.empty(b, n, h, w, kernel_size, kernel_size, dtype=dtype, device=q.device)
        q_col = (qf * scale).unsqueeze(-1)                                        # (B, n, H, W, d, 1)
        for a in range(kernel_size):
            logits[..., a, :] = torch.matmul(_gather_window(kf, kr[:, a], kc), q_col).squeeze(-1)
        if rpb is not None:  # rpb[:, br[i, a], bc[j, b]] → (n, H, W, K, K), broadcast over batch
            logits += rpb.to(dtype)[:, br[:, :, None, None], bc[None, None]].permute(0, 1, 3, 2, 4)
        attn = torch.softmax(logits.flatten(-2), dim=-1).view_as(logits)
        out = torch.zeros(b, n, h, w, d, dtype=dtype, device=q.device)
        for a in range(kernel_size):
            out += torch.matmul(attn[..., a, :].unsqueeze(-2), _gather_window(vf, kr[:, a], kc)).squeeze(-2)
        ctx.save_for_backward(q, k, v, rpb, attn)
        ctx.kernel_size, ctx.dilation, ctx.scale = kernel_size, dilation, scale
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, dout):
        q, k, v, rpb, attn = ctx.saved_tensors
        kernel_size, scale = ctx.kernel_size, ctx.scale
        dtype = attn.dtype
        b, n, h, w, d = q.shape
        kr, br = window_indices(h, kernel_size, ctx.dilation, q.device)
        kc, bc = window_indices(w, kernel_size, ctx.dilation, q.device)
        qf, kf, vf, dout = q.to(dtype), k.to(dtype), v.to(dtype), dout.to(dtype)

        dattn = torch.empty_like(attn)
        dv = torch.zeros_like(vf)
        dout_col = dout.unsqueeze(-1)
        for a in range(kernel_size):
            dattn[..., a, :] = torch.matmul(_gather_window(vf, kr[:, a], kc), dout_col).squeeze(-1)
            _scatter_window(dv, attn[..., a, :].unsqueeze(-1) * dout.unsqueeze(-2), kr[:, a], kc)
        dlogits = attn * (dattn - (attn * dattn).sum((-2, -1), keepdim=True))   # softmax backward

        drpb = None
        if rpb is not None:  # adjoint of the bias gather, summed over the batch
            span = 2 * kernel_size - 1
            per_query = dlogits.sum(0).permute(0, 1, 3, 2, 4).reshape(n, h * kernel_size, w, kernel_size)
            rows = torch.zeros(n, span, w, kernel_size, dtype=dtype, device=q.device)
            rows.index_add_(1, br.flatten(), per_query)
            drpb = torch.zeros(n, span, span, dtype=dtype, device=q.device)
            drpb.index_add_(2, bc.flatten(), rows.reshape(n, span, w * kernel_size))
            drpb = drpb.to(rpb.dtype)

        dq = torch.zeros_like(qf)
        dk = torch.zeros_like(kf)
        for a in range(kernel_size):
            dl = dlogits[..., a, :]                                              # (B, n, H, W, K)
            dq += torch.matmul(dl.unsqueeze(-2), _gather_window(kf, kr[:, a], kc)).squeeze(-2)
            _scatter_window(dk, dl.unsqueeze(-1) * qf.unsqueeze(-2), kr[:, a], kc)
        return (dq.mul_(scale).to(q.dtype), dk.mul_(scale).to(k.dtype), dv.to(v.dtype),
                None, None, drpb, None)


def neighborhood_attention_2d(q, k, v, kernel_size: int, dilation: int, rpb: Optional[torch.Tensor],
                              scale: float) -> torch.Tensor:
    """Validated inputs in, ``(B, heads, H, W, head_dim)`` out."""
    return NeighborhoodAttention2DFn.apply(q, k, v, kernel_size, dilation, rpb, scale)
