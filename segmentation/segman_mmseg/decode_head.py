"""mmseg decode head ``SegMANDecoder`` (alias ``MMSCDecoder``), docs/model.md §5.

A ``BaseDecodeHead`` (input selection, dropout, ``conv_seg``, losses) that reuses the MMSC fusion
of :mod:`segman.models.decoder` unchanged, so parameter names match the official checkpoints
(``decode_head.linear_c4.proj.weight``, ``decode_head.vssm.*``, ...).  Every ConvModule uses the
config's ``norm_cfg`` (the original hard-coded SyncBN; ``tools/train.py`` turns SyncBN into BN
outside distributed runs).
"""
from __future__ import annotations

import inspect
import warnings
from typing import Any, Sequence

import torch
from mmcv.cnn import build_norm_layer
from mmseg.models.builder import HEADS
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from torch import nn

from segman.models import MMSCFusion
from segman.ops import bilinear_resize

from .config_checks import reject_unknown_arguments

# Keys the original configs pass but its decoder never reads.
LEGACY_UNUSED_KEYS = ('image_size', 'channel_split', 'short_cut', 'interpolate_mode', 'use_rpb', 'decoder_params')
_BASE_ARGS = tuple(p for p in inspect.signature(BaseDecodeHead.__init__).parameters if p not in ('self', 'input_transform'))


@HEADS.register_module(name=['SegMANDecoder', 'MMSCDecoder'])
class SegMANDecoder(MMSCFusion, BaseDecodeHead):
    """MMSC decoder: multi-scale fusion with a selective-scan block at 1/32, logits at 1/8.

    Args:
        feat_proj_dim: width ``P`` of the per-scale projections (T 192, S 288, B 320, L 432).
        **kwargs: ``BaseDecodeHead`` arguments (``in_channels`` = the four encoder widths,
            ``channels``, ``num_classes``, ``norm_cfg``, ``dropout_ratio``, ``loss_decode``, ...).
    """

    def __init__(self, feat_proj_dim: int, **kwargs: Any) -> None:
        legacy = [k for k in LEGACY_UNUSED_KEYS if kwargs.pop(k, None) is not None]
        if legacy:
            warnings.warn(f'SegMANDecoder ignores {legacy}: the original accepted but never used them')
        reject_unknown_arguments('SegMANDecoder', kwargs, _BASE_ARGS + ('feat_proj_dim',))
        super().__init__(input_transform='multiple_select', **kwargs)
        self.init_mmsc(self.in_channels, self.channels, feat_proj_dim, norm_layer=self._norm,
                       pool_norm_layer=self._norm, align_corners=self.align_corners)

    def _norm(self, channels: int) -> nn.Module:
        if self.norm_cfg is None:
            return nn.BatchNorm2d(channels)
        return build_norm_layer(self.norm_cfg, channels)[1]

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """The four encoder maps → logits ``(B, num_classes, H/8, W/8)``."""
        return self.cls_seg(self.fuse(self._transform_inputs(inputs)))

    def forward_train(self, inputs, img_metas, gt_semantic_seg, train_cfg) -> dict:
        """mmseg's ``forward_train``, after checking that every label is a class or the ignore index."""
        self.check_labels(gt_semantic_seg, img_metas)
        return super().forward_train(inputs, img_metas, gt_semantic_seg, train_cfg)

    def check_labels(self, labels: torch.Tensor, img_metas: Sequence[dict]) -> None:
        """Raise ``ValueError`` naming the images whose labels ``(B, 1, H, W)`` hold values outside
        ``[0, num_classes)`` other than ``ignore_index`` (one synchronisation per step)."""
        bad = ((labels < 0) | (labels >= self.num_classes)) & (labels != self.ignore_index)
        if not bad.any():
            return
        per_image = bad.flatten(1).any(1).tolist()
        files = [meta.get("filename", f"image {i}") for i, (meta, b) in enumerate(zip(img_metas, per_image)) if b]
        values = labels[bad].unique()[:8].tolist()
        raise ValueError(f"labels {values} are outside the {self.num_classes} classes (0..{self.num_classes - 1}, "
                         f"ignore index {self.ignore_index}) in {', '.join(files)}; check the label maps, or the "
                         f"config's num_classes / reduce_zero_label")

    def losses(self, seg_logit: torch.Tensor, seg_label: torch.Tensor) -> dict:
        """mmseg's losses, with the logits brought to the label's size by ``segman.ops.bilinear_resize``
        (same values, a backward of matrix products instead of atomic adds); mmseg's own resize is then
        an identity."""
        seg_logit = bilinear_resize(seg_logit, seg_label.shape[2:], self.align_corners)
        return super().losses(seg_logit, seg_label)
