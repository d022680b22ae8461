"""VSSM: the four-direction 2-D selective scan module shared by encoder and decoder (docs/model.md §4).

Adapted from the SS2D idea of VMamba (Liu et al., 2024) on top of the Mamba S6 recurrence
(Gu & Dao, 2023), with SegMAN's settings: ``d_inner = d_model`` (no in/out projections), four
scan directions, state size 1 by default.  All parameters are raw ``nn.Parameter`` s with their own
initialisation, so model-wide conv/linear init functions leave them alone.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from segman.ops import cross_merge, cross_scan, selective_scan

NUM_DIRECTIONS = 4  # the scan orders of segman.ops.cross_scan


class VSSM(nn.Module):
    """2-D selective scan over a ``(B, C, H, W)`` map, returning ``(B, C, H*W)`` in float32.

    Forward::

        xs        = cross_scan(x)                                     (B, 4C, L)
        dt, B, C  = split(conv1d(xs, x_proj_weight, groups=4))        (B, 4, R+2N, L)
        delta     = conv1d(dt, dt_projs_weight, groups=4)             (B, 4C, L), no bias here
        ys        = selective_scan(xs, delta, -exp(A_logs), B, C, Ds, dt_projs_bias, softplus)
        y         = cross_merge(ys)                                   (B, C, L), float32

    The scan inputs share the dtype of ``x``: under autocast the projections come out in the
    autocast dtype and are cast back to ``x.dtype`` before the scan (a float32 ``x``, e.g. a
    LayerNorm output, is scanned in float32).  The output is always float32 (docs/model.md §3.5).

    Args:
        d_model: channels ``C``.
        d_state: SSM state size ``N``.
        dt_rank: rank ``R`` of the step-size projection; None means ``ceil(C / 16)``.
        dt_min, dt_max: range of the initial step sizes (log-uniform).
        dt_init_floor: lower clamp of the initial step sizes.
    """

    def __init__(self, d_model: int, d_state: int = 1, dt_rank: int | None = None, dt_min: float = 0.001,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.dt_rank = math.ceil(d_model / 16) if dt_rank is None else dt_rank
        k, c, r, n = NUM_DIRECTIONS, d_model, self.dt_rank, d_state
        self.x_proj_weight = nn.Parameter(torch.empty(k * (r + 2 * n), c, 1))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, c, r))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, c))
        self.A_logs = nn.Parameter(torch.empty(k * c, n))
        self.Ds = nn.Parameter(torch.empty(k * c))
        self.reset_parameters(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def reset_parameters(self, dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4) -> None:
        """Mamba's initialisation (docs/model.md §4.4).

        ``x_proj_weight``: four default ``nn.Linear(C, R + 2N)`` weights, i.e. U(±1/√C);
        ``dt_projs_weight``: U(±1/√R); ``dt_projs_bias``: inverse softplus of
        ``dt = exp(U(log dt_min, log dt_max))`` clamped to ``dt_init_floor``;
        ``A_logs``: ``log(1..N)`` per channel; ``Ds``: ones.
        """
        bound = self.d_model ** -0.5
        self.x_proj_weight.uniform_(-bound, bound)
        bound = self.dt_rank ** -0.5
        self.dt_projs_weight.uniform_(-bound, bound)
        dt = torch.exp(torch.rand_like(self.dt_projs_bias) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        states = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_logs.device)
        self.A_logs.copy_(torch.log(states).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` → ``(B, C, H*W)`` float32."""
        batch, channels, height, width = x.shape
        length = height * width
        k, r, n = NUM_DIRECTIONS, self.dt_rank, self.d_state
        xs = cross_scan(x).view(batch, k * channels, length)
        proj = F.conv1d(xs, self.x_proj_weight, groups=k).view(batch, k, r + 2 * n, length)
        dts, Bs, Cs = proj.to(xs.dtype).split((r, n, n), dim=2)
        delta = F.conv1d(dts.reshape(batch, k * r, length), self.dt_projs_weight.reshape(k * channels, r, 1),
                         groups=k).to(xs.dtype)
        ys = selective_scan(xs, delta, -torch.exp(self.A_logs.float()), Bs.contiguous(), Cs.contiguous(),
                            D=self.Ds.float(), delta_bias=self.dt_projs_bias.reshape(-1).float(),
                            delta_softplus=True)
        return cross_merge(ys.view(batch, k, channels, height, width))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_state={self.d_state}, dt_rank={self.dt_rank}"
