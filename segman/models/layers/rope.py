"""2-D rotary position embedding, rotate-every-two layout (docs/model.md §2.4).

RoPE: Su et al., "RoFormer" (2021).  Here the first half of each head's channels rotates with
the row index and the second half with the column index; channel pairs ``(2p, 2p+1)`` share one
angle.  The frequency table ``angle`` is a persistent buffer because the original checkpoints
contain it (``layers.{2i}.rope.angle``).
"""
from __future__ import annotations

import torch
from torch import nn


def apply_rope(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of ``x`` by the position angles: ``x * cos + rot(x) * sin``.

    ``rot`` maps each pair ``(x[2p], x[2p+1])`` to ``(-x[2p+1], x[2p])``.

    Args:
        x: ``(..., H, W, head_dim)``.
        sin, cos: ``(H, W, head_dim)`` float32 tables from :class:`RoPE2d`.

    Returns:
        ``(..., H, W, head_dim)`` in the promoted dtype (float32 for a bf16/fp16 ``x``).
    """
    rotated = torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)
    return x * cos + rotated * sin


class RoPE2d(nn.Module):
    """Sin/cos tables of 2-D RoPE for one head dim.

    ``angle = [θ0, θ0, θ1, θ1, …]`` (length ``head_dim / 2``) with ``θ_m = 10000^(-t_m)`` and
    ``t = linspace(0, 1, head_dim // 4)``.

    Args:
        head_dim: channels per head; must be a multiple of 4.
    """

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"RoPE2d needs a head_dim that is a multiple of 4, got {head_dim}")
        theta = 10000.0 ** -torch.linspace(0, 1, head_dim // 4)
        self.register_buffer("angle", theta.repeat_interleave(2))

    def forward(self, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables for an ``H×W`` map: ``(sin, cos)``, each ``(H, W, head_dim)`` float32.

        ``φ[i, j] = [i * angle, j * angle]`` (row angles first, then column angles).
        """
        height, width = size
        angle = self.angle.float()
        rows = torch.arange(height, device=angle.device, dtype=torch.float32)[:, None] * angle
        cols = torch.arange(width, device=angle.device, dtype=torch.float32)[:, None] * angle
        half = angle.numel()
        phi = torch.cat((rows[:, None].expand(height, width, half), cols[None].expand(height, width, half)), -1)
        return phi.sin(), phi.cos()

    def extra_repr(self) -> str:
        return f"head_dim={2 * self.angle.numel()}"
