"""Conv → norm → activation, named like mmcv's ``ConvModule`` (keys ``conv.*`` and ``bn.*``)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class ConvNormAct(nn.Module):
    """A bias-free conv followed by a norm layer and an activation, as used by the MMSC decoder.

    The children are named ``conv`` and ``bn`` so that the state_dict matches mmcv's
    ``ConvModule`` (docs/model.md §5.1); the activation has no parameters.  Initialisation is mmcv's:
    kaiming-normal (fan_out, relu) for the conv, weight 1 / bias 0 for the norm.

    Args:
        in_channels, out_channels: conv channels.
        kernel_size, stride, padding: conv geometry.
        norm_layer: called with ``out_channels`` (e.g. ``nn.BatchNorm2d``, ``nn.SyncBatchNorm``).
        act_layer: activation type, called without arguments.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 padding: int = 0, norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
                 act_layer: Callable[[], nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = norm_layer(out_channels)
        self.act = act_layer()
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` → ``(B, out_channels, H', W')``."""
        return self.act(self.bn(self.conv(x)))
