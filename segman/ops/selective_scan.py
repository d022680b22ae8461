"""Selective scan (S6 / Mamba recurrence with K groups), docs/model.md §4.3."""
from __future__ import annotations

from typing import Optional

import torch

from . import library
from ._checks import check_floats, check_scan_parameters
from .dispatch import Backend, exporting_to_onnx, kernel_can_run, runs_anywhere, select
from .torch_backend.selective_scan import export_forward


def _run(backend: str):
    def run(u, delta, A, B, C, D, delta_bias, delta_softplus):
        return library.selective_scan_op(u, delta, A, B, C, D, delta_bias, delta_softplus, backend)[0]
    return run


# The export form while exporting to ONNX; then fastest first (docs/performance.md, H100): the CUDA
# extension when it is built (d_state <= 16; 1.06-1.11x the memory floor forward), then Triton, then
# the reference.
BACKENDS = [Backend("onnx", exporting_to_onnx, export_forward),
            Backend("cuda", kernel_can_run("selective_scan", "cuda"), _run("cuda")),
            Backend("triton", kernel_can_run("selective_scan", "triton"), _run("triton")),
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
        A: ``(G*Dg, N)``, floating, at most 0 (SegMAN: ``-exp(A_logs)``).  A positive entry makes the
            state grow as ``exp(t * dt * A)`` and overflow to inf; it is not checked, because reading the
            values back would stall the GPU on every call.
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
    check_floats((("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("delta_bias", delta_bias)))
    if u.dim() != 3:
        raise ValueError(f"{op}: u must be (batch, groups*channels, length), got shape {tuple(u.shape)}")
    if B.dim() != 4:
        raise ValueError(f"{op}: B must be (batch, groups, d_state, length), got shape {tuple(B.shape)}")
    channels, groups, d_state = u.shape[1], B.shape[1], B.shape[2]
    if groups < 1 or channels % groups:
        raise ValueError(f"{op}: u has {channels} channels, not a multiple of the {groups} groups in B")
    if d_state < 1:
        raise ValueError(f"{op}: d_state (B.shape[2]) must be >= 1")
    check_scan_parameters(op, ("u", u), delta, A, B, C, D, delta_bias, delta_shape=tuple(u.shape),
                          delta_hint=" (same as u)", channels=channels, a_hint=" (channels, d_state)", groups=groups)
    args = (u, delta, A, B, C, D, delta_bias, delta_softplus)
    return select(op, BACKENDS, backend, *args).run(*args)
