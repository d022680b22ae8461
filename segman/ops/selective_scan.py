"""Selective scan (S6 / Mamba recurrence with K groups), docs/model.md §4.3."""
from __future__ import annotations

from typing import Optional

import torch

from . import library
from ._checks import check_float, check_same, check_shape
from .dispatch import HAS_CUDA_EXTENSION, HAS_TRITON, Backend, runs_anywhere, select


def _cuda_can_run(*args, **kwargs) -> Optional[str]:
    from .cuda_backend.selective_scan import INSTALL_HINT, can_run

    if not HAS_CUDA_EXTENSION:
        return INSTALL_HINT

    return can_run(*args, **kwargs)


def _triton_can_run(u, *args, **kwargs) -> Optional[str]:
    if u.device.type != "cuda":
        return f"inputs are on {u.device.type}"
    if not HAS_TRITON:
        return "triton is not installed"
    from .triton_backend.selective_scan import can_run

    return can_run(u, *args, **kwargs)


def _run(backend: str):
    def run(u, delta, A, B, C, D, delta_bias, delta_softplus):
        return library.selective_scan_op(u, delta, A, B, C, D, delta_bias, delta_softplus, backend)[0]
    return run


# Fastest first (docs/performance.md, H100): the CUDA extension when it is
# built (d_state <= 16; 1.1-1.3x the memory floor forward), then Triton, then the reference.
BACKENDS = [Backend("cuda", _cuda_can_run, _run("cuda")),
            Backend("triton", _triton_can_run, _run("triton")),
            Backend("torch", runs_anywhere, _run("torch"))]


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: Optional[torch.Tensor] = None, delta_bias: Optional[torch.Tensor] = None,
                   delta_softplus: bool = True, backend: Optional[str] = None) -> torch.Tensor:
    r"""Grouped selective scan with a float32 output.

    For each batch ``b`` and channel ``c`` of group ``g = c // Dg``::

        dt_t = softplus(delta[b, c, t] + delta_bias[c])          # softplus only if delta_softplus
        h_t  = exp(dt_t * A[c, :]) * h_{t-1} + dt_t * B[b, g, :, t] * u[b, c, t]   (h_{-1} = 0)
        y_t  = sum_n C[b, g, n, t] * h_t[n] + D[c] * u[b, c, t]

    Args:
        u: ``(Bt, G*Dg, L)``, float32/float16/bfloat16 (float64 for gradcheck).
        delta: ``(Bt, G*Dg, L)``, same dtype as ``u``.
        A: ``(G*Dg, N)``, floating (SegMAN: ``-exp(A_logs)``).
        B, C: ``(Bt, G, N, L)``, same dtype as ``u``.
        D: optional ``(G*Dg,)`` skip weights.
        delta_bias: optional ``(G*Dg,)`` added to ``delta`` before the softplus.
        delta_softplus: apply softplus (threshold 20) to the step sizes.
        backend: force ``"cuda"`` (the optional extension of kernels/selective_scan, d_state <= 16),
            ``"triton"`` (any d_state, tuned for 1) or ``"torch"`` (the reference, CPU and GPU); None picks the
            fastest one that supports the inputs.  The GPU backends take float32/float16/bfloat16.

    Returns:
        ``(Bt, G*Dg, L)`` in float32 (float64 for float64 inputs), whatever the input dtype.
    """
    op = "selective_scan"
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D),
                    ("delta_bias", delta_bias)):
        if t is not None:
            check_float(name, t)
    if u.dim() != 3:
        raise ValueError(f"{op}: u must be (batch, groups*channels, length), got shape {tuple(u.shape)}")
    if B.dim() != 4:
        raise ValueError(f"{op}: B must be (batch, groups, d_state, length), got shape {tuple(B.shape)}")
    batch, channels, length = u.shape
    groups, d_state = B.shape[1], B.shape[2]
    if groups < 1 or channels % groups:
        raise ValueError(f"{op}: u has {channels} channels, not a multiple of the {groups} groups in B")
    if d_state < 1:
        raise ValueError(f"{op}: d_state (B.shape[2]) must be >= 1")
    check_shape("delta", delta, u.shape, " (same as u)")
    check_shape("A", A, (channels, d_state), " (channels, d_state)")
    check_shape("B", B, (batch, groups, d_state, length))
    check_shape("C", C, (batch, groups, d_state, length), " (same as B)")
    if D is not None:
        check_shape("D", D, (channels,))
    if delta_bias is not None:
        check_shape("delta_bias", delta_bias, (channels,))
    check_same(op, "dtype", [("u", u), ("delta", delta), ("B", B), ("C", C)])
    check_same(op, "device", [("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D),
                              ("delta_bias", delta_bias)])
    args = (u, delta, A, B, C, D, delta_bias, delta_softplus)
    return select(op, BACKENDS, backend, *args).run(*args)
