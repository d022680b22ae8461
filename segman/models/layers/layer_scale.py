"""LayerScale with a bias (docs/model.md §2.3).

SegMAN's LayerScale is a depthwise 1×1 convolution, ``y[:, c] = x[:, c] * weight[c] + bias[c]``,
so unlike CaiT's (Touvron et al., 2021) it also shifts the branch.  The parameter shapes follow
the original checkpoints: ``weight (C, 1, 1, 1)``, ``bias (C,)``.
"""
from __future__ import annotations

import torch
from torch import nn


class LayerScale(nn.Module):
    """Per-channel scale and shift of a ``(B, C, H, W)`` map.

    Args:
        dim: channels ``C``.
        init_value: initial scale (the bias starts at zero).
    """

    def __init__(self, dim: int, init_value: float = 1e-6) -> None:
        super().__init__()
        self.init_value = init_value
        self.weight = nn.Parameter(torch.full((dim, 1, 1, 1), init_value))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` → ``(B, C, H, W)``."""
        return torch.addcmul(self.bias.view(1, -1, 1, 1), x, self.weight.view(1, -1, 1, 1))

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, init_value={self.init_value}"
