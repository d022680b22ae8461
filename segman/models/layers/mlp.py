"""Convolutional FFN with an inner depthwise residual (docs/model.md §2.3, also the decoder's §5.3)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class ConvFFN(nn.Module):
    """``fc2(h + dwconv(h))`` with ``h = act(fc1(x))``; 1×1 convs around a 3×3 depthwise conv.

    The residual around ``dwconv`` is part of the original model (docs/model.md §10.1).

    Args:
        dim: input and output channels ``C``.
        hidden_dim: hidden channels ``F`` (SegMAN: ``int(mlp_ratio * C)``).
        act_layer: activation type (exact GELU by default).
    """

    def __init__(self, dim: int, hidden_dim: int, act_layer: Callable[[], nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1)
        self.act = act_layer()
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` → ``(B, C, H, W)``."""
        h = self.act(self.fc1(x))
        return self.fc2(h + self.dwconv(h))
