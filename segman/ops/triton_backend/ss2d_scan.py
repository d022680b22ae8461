"""Fused SS2D step on the Triton selective-scan kernels: cross-scan in the scan's loads, cross-merge
in its stores (``segman.ops.ss2d_scan``); the kernels live in :mod:`.selective_scan`."""
from __future__ import annotations

from typing import Optional

import torch

from . import selective_scan as scan

can_run = scan.can_run  # the same kernels, the same limits
states_meta = scan.states_meta


def forward(x, delta, A, B, C, D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
            delta_softplus: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` ``(Bt, Dg, H, W)`` → merged ``(Bt, Dg, H*W)`` float32 and the chunk states."""
    return scan.forward(x, delta, A, B, C, D, delta_bias, delta_softplus, hw=tuple(x.shape[2:]))


def backward(x, delta, A, B, C, D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], delta_softplus: bool,
             states: torch.Tensor, dy: torch.Tensor):
    """``(dx, ddelta, dA, dB, dC, dD, d_delta_bias)``, None for absent inputs."""
    return scan.backward(x, delta, A, B, C, D, delta_bias, delta_softplus, states, dy, hw=tuple(x.shape[2:]))
