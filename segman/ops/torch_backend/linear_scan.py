"""Stable, vectorised first-order linear recurrence ``h_t = a_t * h_{t-1} + b_t``.

The sequence is cut into chunks of ``CHUNK`` steps.  Inside a chunk a short loop over the chunk
positions runs on all chunks at once (one ``addcmul`` per step over contiguous runs of chunks);
the states entering each chunk come from the same scan applied recursively to the chunk-level
recurrence ``(prod a, h_end)``.  Only products of ``a`` are formed, never ``exp`` of a positive
cumulative sum, so decays as small as exp(-1e4) underflow cleanly to zero instead of producing
inf/NaN.  There is no Python loop over the full sequence length: the loop count is about
``CHUNK * log_CHUNK(L)``.

:func:`unrolled_linear_scan` is the same computation with every step out of place, for export to a
graph; there shorter chunks (``EXPORT_CHUNK``) run faster in onnxruntime, whose per-step slicing
and stacking cost grows with the chunk length.
"""
from __future__ import annotations

from typing import Callable

import torch

CHUNK = 64
EXPORT_CHUNK = 16
TimeMajorScan = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


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


def _scan_time_major_unrolled(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_scan_time_major` with nothing written in place: one out-of-place step per position,
    stacked at the end, which ``torch.onnx.export`` traces as a few graph nodes per step."""
    h, prod = [b[..., 0, :]], [a[..., 0, :]]
    for t in range(1, a.shape[-2]):
        h.append(b[..., t, :] + a[..., t, :] * h[-1])
        prod.append(prod[-1] * a[..., t, :])
    return torch.stack(h, -2), torch.stack(prod, -2)


def linear_scan(a: torch.Tensor, b: torch.Tensor, chunk: int = CHUNK,
                time_major: TimeMajorScan = _scan_time_major) -> torch.Tensor:
    """``h_t = a_t * h_{t-1} + b_t`` along the last dim with ``h_{-1} = 0``.

    Args:
        a, b: ``(*, L)`` tensors of one floating dtype (broadcast already applied).
        chunk: the chunk length; time_major: the scan inside the chunks.
    Returns:
        h: ``(*, L)``.
    """
    length = a.shape[-1]
    if length <= chunk:
        h, _ = time_major(a.unsqueeze(-1), b.unsqueeze(-1))
        return h.squeeze(-1)
    n_chunks = -(-length // chunk)
    pad = n_chunks * chunk - length
    if pad:  # a = 1, b = 0 past the end leaves the real steps untouched
        a = torch.nn.functional.pad(a, (0, pad), value=1.0)
        b = torch.nn.functional.pad(b, (0, pad), value=0.0)
    # (*, n, T) -> (*, T, n): a blocked 2-D transpose, cheap compared with moving T to the front
    a_tm = a.unflatten(-1, (n_chunks, chunk)).transpose(-1, -2).contiguous()
    b_tm = b.unflatten(-1, (n_chunks, chunk)).transpose(-1, -2).contiguous()
    h_local, prod = time_major(a_tm, b_tm)
    chunk_end = linear_scan(prod[..., -1, :], h_local[..., -1, :], chunk, time_major)  # (*, n): state after each chunk
    carry_in = torch.nn.functional.pad(chunk_end[..., :-1], (1, 0))  # state entering each chunk
    h_local = torch.addcmul(h_local, prod, carry_in.unsqueeze(-2))
    h = h_local.transpose(-1, -2).flatten(-2)
    return h[..., :length] if pad else h


def unrolled_linear_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """:func:`linear_scan` with nothing written in place, the form that exports to a graph (ONNX):
    about ``EXPORT_CHUNK * log_EXPORT_CHUNK(L)`` out-of-place steps on ``1/EXPORT_CHUNK`` of the states each."""
    return linear_scan(a, b, EXPORT_CHUNK, _scan_time_major_unrolled)


def reverse_linear_scan(a_next: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The adjoint recurrence ``d_t = g_t + a_next_t * d_{t+1}`` with ``d_L = 0`` (last dim)."""
    return linear_scan(a_next.flip(-1), g.flip(-1)).flip(-1)
