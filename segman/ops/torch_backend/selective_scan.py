"""Reference selective scan: forward and an explicit backward (the adjoint recurrence).

Shapes (``G`` groups of ``Dg`` channels, ``N`` states, ``L`` steps, ``Bt`` batch)::

    u, delta: (Bt, G*Dg, L)    A: (G*Dg, N)    B, C: (Bt, G, N, L)    D, delta_bias: (G*Dg,)

Everything is computed in float32 (float64 when any input is float64) and the output has that
dtype.  Forward returns the hidden states ``h`` (``Bt*G*Dg*N*L`` values) for the backward, which
runs the adjoint recurrence with the same stable chunked scan.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .linear_scan import linear_scan, reverse_linear_scan, unrolled_linear_scan

SOFTPLUS_THRESHOLD = 20.0  # torch.nn.functional.softplus default, also the CUDA kernel's


def _step_sizes(delta, delta_bias, softplus: bool, dtype, export: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw = delta + delta_bias, dt = softplus(raw) or raw), both ``(Bt, G*Dg, L)`` in ``dtype``.
    ``export``: softplus as ``relu(x) + log1p(exp(-|x|))``, elementwise operators that onnxruntime
    vectorises (its own Softplus is several times slower)."""
    raw = delta.to(dtype)
    if delta_bias is not None:
        raw = raw + delta_bias.to(dtype)[:, None]
    if not softplus:
        return raw, raw
    return raw, (F.relu(raw) + torch.log1p(torch.exp(-raw.abs())) if export else F.softplus(raw))


def compute_dtype(u, A, B, C) -> torch.dtype:
    """float64 if any of ``u, A, B, C`` is float64, else float32 (also the output dtype)."""
    return torch.float64 if torch.float64 in {t.dtype for t in (u, A, B, C)} else torch.float32


def states_meta(u, A, B, C) -> tuple[tuple[int, ...], torch.dtype]:
    """Shape and dtype of the hidden states that :func:`forward` returns: ``(Bt, G, Dg, N, L)``."""
    (bt, groups, n_state, length), channels = B.shape, A.shape[0]
    return (bt, groups, channels // groups, n_state, length), compute_dtype(u, A, B, C)


def forward(u, delta, A, B, C, D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
            delta_softplus: bool, export: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated inputs in; ``y`` ``(Bt, G*Dg, L)`` float32/float64 and the hidden states ``h`` out.
    ``export``: the form that ``torch.onnx.export`` traces and onnxruntime runs fast (the scan
    unrolled, the read-out over the states as a product and a sum instead of an einsum)."""
    dtype = compute_dtype(u, A, B, C)
    bt, channels, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    dg = channels // groups
    uf = u.to(dtype)
    raw, dt = _step_sizes(delta, delta_bias, delta_softplus, dtype, export)
    Af = A.to(dtype).view(groups, dg, n_state, 1)
    decay = torch.exp(dt.view(bt, groups, dg, 1, length) * Af)              # (Bt, G, Dg, N, L)
    drive = (dt * uf).view(bt, groups, dg, 1, length) * B.to(dtype).unsqueeze(2)
    if export:
        h = unrolled_linear_scan(decay, drive)                              # (Bt, G, Dg, N, L)
        y = (h * C.to(dtype).unsqueeze(2)).sum(3)
    else:
        h = linear_scan(decay, drive)
        y = torch.einsum("bgcnl,bgnl->bgcl", h, C.to(dtype))
    y = y.reshape(bt, channels, length)
    if D is not None:
        y = y + D.to(dtype)[:, None] * uf
    return y, h


def backward(u, delta, A, B, C, D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], delta_softplus: bool,
             h: torch.Tensor, dy: torch.Tensor):
    """``(du, ddelta, dA, dB, dC, dD, d_delta_bias)`` in the inputs' dtypes (None for absent inputs)."""
    dtype = h.dtype
    bt, channels, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    dg = channels // groups
    dy = dy.to(dtype)
    uf = u.to(dtype)
    raw, dt = _step_sizes(delta, delta_bias, delta_softplus, dtype)
    Af = A.to(dtype).view(groups, dg, n_state, 1)
    Bf = B.to(dtype)
    Cf = C.to(dtype)
    dy5 = dy.view(bt, groups, dg, 1, length)
    decay = torch.exp(dt.view(bt, groups, dg, 1, length) * Af)  # recomputed, not saved

    dC = torch.einsum("bgcnl,bgcl->bgnl", h, dy5.squeeze(3))
    g = dy5 * Cf.unsqueeze(2)                                          # dL/dh_t, direct part
    a_next = F.pad(decay[..., 1:], (0, 1))
    dh = reverse_linear_scan(a_next, g)                                # (Bt, G, Dg, N, L)
    h_prev = F.pad(h[..., :-1], (1, 0))
    d_log_decay = dh * h_prev * decay                                  # dL/d(dt*A)
    dA = torch.einsum("bgcnl,bgcl->gcn", d_log_decay, dt.view(bt, groups, dg, length))
    dt_u = (dt * uf).view(bt, groups, dg, length)
    dB = torch.einsum("bgcnl,bgcl->bgnl", dh, dt_u)
    dh_B = torch.einsum("bgcnl,bgnl->bgcl", dh, Bf).reshape(bt, channels, length)
    ddt = (d_log_decay * Af).sum(3).reshape(bt, channels, length) + dh_B * uf
    du = dh_B * dt
    dD = None
    if D is not None:
        du = du + D.to(dtype)[:, None] * dy
        dD = (dy * uf).sum((0, 2)).to(D.dtype)
    if delta_softplus:
        ddt = ddt * torch.where(raw > SOFTPLUS_THRESHOLD, torch.ones_like(raw), torch.sigmoid(raw))
    d_bias = ddt.sum((0, 2)).to(delta_bias.dtype) if delta_bias is not None else None
    return (du.to(u.dtype), ddt.to(delta.dtype), dA.reshape(channels, n_state).to(A.dtype),
            dB.to(B.dtype), dC.to(C.dtype), dD, d_bias)


def export_forward(u, delta, A, B, C, D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
                   delta_softplus: bool) -> torch.Tensor:
    """``y`` of :func:`forward` by whole-tensor ops only, as ``torch.onnx.export`` traces it."""
    return forward(u, delta, A, B, C, D, delta_bias, delta_softplus, export=True)[0]
