"""One SS2D step (docs/model.md §4.1 steps 1, 4, 5): cross-scan → selective scan → cross-merge.

``ss2d_scan(x, delta, ...)`` equals::

    xs = cross_scan(x).view(B, 4 * C, H * W)
    ys = selective_scan(xs, delta, A, B, C, D, delta_bias, delta_softplus)
    y  = cross_merge(ys.view(B, 4, C, H, W))

The ``triton`` backend fuses the three: the scan reads ``x`` in each direction's order and adds
its output straight into the merged map, so the ``(B, 4C, L)`` intermediates are never written.
The ``unfused`` backend is exactly the three public calls above (each picking its own backend),
and ``torch`` composes the reference backends.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import library
from ._checks import check_floats, check_scan_parameters
from .cross_scan import cross_merge, cross_scan
from .dispatch import Backend, kernel_can_run, runs_anywhere, select
from .selective_scan import selective_scan

GROUPS = 4


def _composed(scan_backend, xs_backend):
    def run(x, delta, A, B, C, D, delta_bias, delta_softplus):
        batch, channels, height, width = x.shape
        xs = cross_scan(x, backend=xs_backend).view(batch, GROUPS * channels, height * width)
        ys = selective_scan(xs, delta, A, B, C, D, delta_bias, delta_softplus, backend=scan_backend)
        return cross_merge(ys.view(batch, GROUPS, channels, height, width), backend=xs_backend)
    return run


def _triton_run(x, delta, A, B, C, D, delta_bias, delta_softplus):
    return library.ss2d_scan_op(x, delta, A, B, C, D, delta_bias, delta_softplus, "triton")[0]


# Fastest first (docs/performance.md, H100): the unfused chain beat the fused Triton kernel at every
# shape measured, forward and backward.
BACKENDS = [Backend("unfused", runs_anywhere, _composed(None, None)),
            Backend("triton", kernel_can_run("ss2d_scan", "triton"), _triton_run),
            Backend("torch", runs_anywhere, _composed("torch", "torch"))]


def ss2d_scan(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
              D: Optional[torch.Tensor] = None, delta_bias: Optional[torch.Tensor] = None,
              delta_softplus: bool = True, backend: Optional[str] = None) -> torch.Tensor:
    """Selective scan of a 2-D map in the four cross-scan directions, merged back (float32 out).

    Args:
        x: ``(B, C, H, W)`` map, float32/float16/bfloat16 (float64 on the torch backends).
        delta: ``(B, 4*C, H*W)`` step sizes in each direction's scan order (direction-major), same
            dtype as ``x``.
        A: ``(4*C, N)``; B, C: ``(B, 4, N, H*W)`` in x's dtype; D, delta_bias: optional ``(4*C,)``;
        delta_softplus: as in :func:`segman.ops.selective_scan`.
        backend: ``"triton"`` (fused), ``"unfused"`` (the three public ops, each auto-selected) or
            ``"torch"``; None picks the fastest that supports the inputs.

    Returns:
        ``(B, C, H*W)`` float32 (float64 for float64 inputs): the sum over the four directions of
        the scan output mapped back to row-major order.
    """
    op = "ss2d_scan"
    check_floats((("x", x), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("delta_bias", delta_bias)))
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be (B, C, H, W), got shape {tuple(x.shape)}")
    if B.dim() != 4:
        raise ValueError(f"{op}: B must be (batch, 4, d_state, H*W), got shape {tuple(B.shape)}")
    batch, channels, height, width = x.shape
    check_scan_parameters(op, ("x", x), delta, A, B, C, D, delta_bias,
                          delta_shape=(batch, GROUPS * channels, height * width), delta_hint=" (B, 4*C, H*W)",
                          channels=GROUPS * channels, a_hint=" (4*C, d_state)", groups=GROUPS)
    args = (x, delta, A, B, C, D, delta_bias, delta_softplus)
    return select(op, BACKENDS, backend, *args).run(*args)
