"""Stable, vectorised first-order linear recurrence ``h_t = a_t * h_{t-1} + b_t``.

The sequence is cut into chunks of ``CHUNK`` steps.  Inside a chunk a short loop over the chunk
positions runs on all chunks at once (one ``addcmul`` per step over contiguous runs of chunks);
the states entering each chunk come from the same scan applied recursively to the chunk-level
recurrence ``(prod a, h_end)``.  Only products of ``a`` are formed, never ``exp`` of a positive
cumulative sum, so decays as small as exp(-1e4) underflow cleanly to zero instead of producing
inf/NaN.  There is no Python loop over the full sequence length: the loop count is about
``CHUNK * log_CHUNK(L)``.
"""
from __future__ import annotations

import torch

CHUNK = 64


def _scan_time_major(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scan along dim -2 from a zero state.  a, b: ``(*, T, n)`` → (h, cumulative prod of a), ``(*, T, n)``.

    Time is the second-to-last dim so that every step reads and writes contiguous runs of ``n``.
    """
    h = torch.empty_like(b)
    prod = torch.empty_like(a)
    h[..., 0, :] = b[..., 0, :]
    prod[..., 0, :] = a[..., 0, :]
    for t in range(1, a.shape[-2]):
        torch.addcmul(b[..., t, :], a[..., t, :], h[..., t - 1, :], out=h[..., t, :])
        torch.mul(prod[..., t - 1, :], a[..., t, :], out=prod[..., t, :])
    return h, prod


def linear_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``h_t = a_t * h_{t-1} + b_t`` along the last dim with ``h_{-1} = 0``.

    Args:
        a, b: ``(*, L)`` tensors of one floating dtype (broadcast already applied).
    Returns:
        h: ``(*, L)``.
    """
    length = a.shape[-1]
    if length <= CHUNK:
        h, _ = _scan_time_major(a.unsqueeze(-1), b.unsqueeze(-1))
        return h.squeeze(-1)
    n_chunks = -(-length // CHUNK)
    pad = n_chunks * CHUNK - length
    if pad:  # a = 1, b = 0 past the end leaves the real steps untouched
        a = torch.nn.functional.pad(a, (0, pad), value=1.0)
        b = torch.nn.functional.pad(b, (0, pad), value=0.0)
    # (*, n, T) -> (*, T, n): a blocked 2-D transpose, cheap compared with moving T to the front
    a_tm = a.unflatten(-1, (n_chunks, CHUNK)).transpose(-1, -2).contiguous()
    b_tm = b.unflatten(-1, (n_chunks, CHUNK)).transpose(-1, -2).contiguous()
    h_local, prod = _scan_time_major(a_tm, b_tm)
    chunk_end = linear_scan(prod[..., -1, :], h_local[..., -1, :])  # (*, n): state after each chunk
    carry_in = torch.nn.functional.pad(chunk_end[..., :-1], (1, 0))  # state entering each chunk
    h_local.addcmul_(prod, carry_in.unsqueeze(-2))
    h = h_local.transpose(-1, -2).flatten(-2)
    return h[..., :length] if pad else h


def parallel_linear_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """:func:`linear_scan` as ``ceil(log2 L)`` whole-tensor steps (Hillis-Steele), no loop over the length
    and nothing written in place: the form that exports to a graph (ONNX).  ``O(L log L)`` work.

    After the step with offset ``s``, position ``t`` holds the recurrence over steps ``(t - 2s, t]``
    as ``h = b_acc`` and the product ``a_acc`` of their ``a``; positions before the start act as
    the identity (``a = 1``, ``b = 0``).
    """
    h, decay = b, a
    length, offset = a.shape[-1], 1
    while offset < length:
        h = h + decay * torch.nn.functional.pad(h[..., :-offset], (offset, 0))
        if 2 * offset < length:
            decay = decay * torch.nn.functional.pad(decay[..., :-offset], (offset, 0), value=1.0)
        offset *= 2
    return h


def reverse_linear_scan(a_next: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The adjoint recurrence ``d_t = g_t + a_next_t * d_{t+1}`` with ``d_L = 0`` (last dim)."""
    return linear_scan(a_next.flip(-1), g.flip(-1)).flip(-1)
