"""MMSC decoder of SegMAN: multi-scale context fusion with a state space block (docs/model.md §5).

The math lives in the mixin :class:`MMSCFusion` so that two owners share it with identical
parameter names:

* :class:`MMSCHead` here, a plain ``nn.Module`` (no mmseg needed);
* the mmseg head ``SegMANDecoder(MMSCFusion, BaseDecodeHead)`` of the plugin (configs may also call
  it ``MMSCDecoder``, the original's name), which calls :meth:`MMSCFusion.init_mmsc` after
  ``BaseDecodeHead.__init__`` and gets ``conv_seg`` and ``dropout`` from the base class.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

from segman.ops import bilinear_resize

from .layers import VSSM, ConvFFN, ConvNormAct

__all__ = ["MMSCFusion", "MMSCHead", "VSSMBlock", "LinearProj"]


class LinearProj(nn.Module):
    """Per-pixel ``nn.Linear`` (SegFormer's ``MLP``): ``(B, C_in, H, W)`` → ``(B, C_out, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class VSSMBlock(nn.Module):
    """The decoder's SSM block (docs/model.md §5.3), on ``D = 3C`` channels::

        x = x + cpe1(x)
        x = x + VSSM(norm1(x))       # float32 result
        x = x + cpe2(x)
        x = x + mlp(norm2(x))        # FFN D → 4D → D

    Unlike the encoder there is no conv/BN/SiLU before the scan and no norm after it.  PyTorch's
    default init, except for the VSSM parameters.

    Args:
        dim: channels ``D``.
        mlp_ratio: FFN expansion.
    """

    def __init__(self, dim: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.cpe1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.token_mixer = VSSM(dim)
        self.norm2 = LayerNorm2d(dim)
        self.cpe2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.mlp = ConvFFN(dim, mlp_ratio * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, D, H, W)`` → ``(B, D, H, W)`` (float32 after the scan)."""
        x = x + self.cpe1(x)
        x = x + self.token_mixer(self.norm1(x)).view_as(x)
        x = x + self.cpe2(x)
        return x + self.mlp(self.norm2(x))


class MMSCFusion:
    """Mixin holding the MMSC fusion (docs/model.md §5.1-5.2); the owner must be an ``nn.Module``.

    Call :meth:`init_mmsc` once ``nn.Module.__init__`` has run; :meth:`fuse` then maps the four
    encoder outputs to the fused ``(B, channels, H/8, W/8)`` map that precedes dropout and
    ``conv_seg``.
    """

    def init_mmsc(self, in_channels: Sequence[int], channels: int, feat_proj_dim: int,
                  norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
                  pool_norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
                  align_corners: bool = False) -> None:
        """Create every MMSC submodule except ``conv_seg`` and ``dropout``.

        Args:
            in_channels: the four encoder widths ``C1..C4`` (``C1`` is unused).
            channels: decoder width ``C``.
            feat_proj_dim: per-scale projection width ``P``.
            norm_layer: norm of every ConvModule except ``image_pool`` (upstream: SyncBN).
            pool_norm_layer: norm of ``image_pool``, which sees one value per channel and image.
            align_corners: for the upsampling of the SSM output (the per-scale projections are
                always resized with ``align_corners=False``, as upstream).
        """
        if len(in_channels) != 4:
            raise ValueError(f"MMSC needs the four encoder widths, got in_channels={tuple(in_channels)}")
        c, p = channels, feat_proj_dim
        cm = partial(ConvNormAct, norm_layer=norm_layer)
        self.align_corners = align_corners
        self.conv_downsample_2 = cm(c, 2 * c, kernel_size=3, stride=2, padding=1)
        self.conv_downsample_4 = cm(c, 4 * c, kernel_size=5, stride=4, padding=1)
        self.linear_c4 = LinearProj(in_channels[3], p)
        self.linear_c3 = LinearProj(in_channels[2], p)
        self.linear_c2 = LinearProj(in_channels[1], p)
        self.linear_fuse = cm(3 * p, c)
        # index i takes 4C·2^i channels: x4 (4C), unshuffled x2 (8C), unshuffled x (16C)
        self.reduce_channels = nn.ModuleList(cm(4 * c * 2 ** i, c) for i in range(3))
        self.vssm = VSSMBlock(3 * c)
        self.short_path = cm(c, c)
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvNormAct(c, c, norm_layer=pool_norm_layer))
        self.proj_out = cm(3 * c, p)
        self.cat = cm(5 * c + 3 * p, c)

    def fuse(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Encoder maps ``c1..c4`` (strides 4, 8, 16, 32) → fused ``(B, C, H8, W8)`` (docs/model.md §5.2).

        ``H8×W8`` is c2's size; it must be a multiple of 4 on each side (input multiple of 32).
        """
        _, c2, c3, c4 = features
        size = c2.shape[-2:]
        if size[0] % 4 or size[1] % 4:
            raise ValueError(f"MMSC needs a stride-8 map whose sides are multiples of 4 (an input that is a "
                             f"multiple of 32), got {tuple(size)}")
        _c4 = bilinear_resize(self.linear_c4(c4), size)
        _c3 = bilinear_resize(self.linear_c3(c3), size)
        _c2 = self.linear_c2(c2)
        x = self.linear_fuse(torch.cat([_c4, _c3, _c2], dim=1))

        short = self.short_path(x)
        pooled = self.image_pool(x).expand_as(short)  # bilinear resize of a 1×1 map = broadcast
        x2 = self.conv_downsample_2(x)
        x4 = self.conv_downsample_4(x)
        multi = torch.cat([self.reduce_channels[2](F.pixel_unshuffle(x, 4)),
                           self.reduce_channels[1](F.pixel_unshuffle(x2, 2)),
                           self.reduce_channels[0](x4)], dim=1)          # (B, 3C, H8/4, W8/4)
        s = bilinear_resize(self.vssm(multi), size, self.align_corners)
        t = self.proj_out(s)
        return self.cat(torch.cat([short, pooled, s, _c2 + t, _c3 + t, _c4 + t], dim=1))


class MMSCHead(MMSCFusion, nn.Module):
    """The MMSC decode head without mmseg: :meth:`MMSCFusion.fuse`, dropout, 1×1 classifier.

    Init (docs/model.md §6): ``conv_seg`` N(0, 0.01) with zero bias; ConvModules kaiming-normal
    (fan_out, relu) with BN (1, 0); the rest PyTorch defaults and VSSM's own.

    Args:
        in_channels, channels, feat_proj_dim, norm_layer, pool_norm_layer, align_corners:
            see :meth:`MMSCFusion.init_mmsc`.
        num_classes: output classes.
        dropout_ratio: ``Dropout2d`` rate before ``conv_seg``.
    """

    def __init__(self, in_channels: Sequence[int], channels: int, feat_proj_dim: int, num_classes: int,
                 dropout_ratio: float = 0.1, norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
                 pool_norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d, align_corners: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.dropout = nn.Dropout2d(dropout_ratio)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)
        self.init_mmsc(in_channels, channels, feat_proj_dim, norm_layer, pool_norm_layer, align_corners)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Encoder maps ``c1..c4`` → logits ``(B, num_classes, H/8, W/8)``."""
        return self.conv_seg(self.dropout(self.fuse(features)))
