"""SegMAN segmentor without mmseg: encoder (backbone form) + MMSC decoder (docs/model.md §5).

The state_dict keys are ``backbone.*`` and ``decode_head.*``, exactly as in the official mmseg
checkpoints, so :func:`segman.models.load_segmentor_checkpoint` loads them with ``strict=True``.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from segman.ops import bilinear_resize

from .decoder import MMSCHead
from .encoder import segman_encoder

__all__ = ["SegMAN", "DECODER_SETTINGS"]

# (channels C, feat_proj_dim P) of the released configs (docs/model.md §5.4).  S-Cityscapes uses C=152:
# pass channels=152 for it.
DECODER_SETTINGS: dict[str, tuple[int, int]] = {
    "t": (128, 192), "s": (144, 288), "b": (180, 320), "l": (224, 432), "l2": (224, 448),
}


class SegMAN(nn.Module):
    """SegMAN for semantic segmentation: ``decode_head(backbone(img))``.

    Args:
        variant: ``t``, ``s``, ``b``, ``l`` or ``l2``.
        num_classes: ADE20K 150, Cityscapes 19, COCO-Stuff 171 (the released T-Cityscapes
            config uses 150).
        channels, feat_proj_dim: decoder widths; None takes the variant's released setting.
        drop_path_rate: backbone stochastic depth.
        dropout_ratio: ``Dropout2d`` before ``conv_seg``.
        norm_layer: the decoder ConvModules' norm (e.g. ``nn.SyncBatchNorm`` for DDP training).
        **backbone_kwargs: further :class:`SegMANEncoder` arguments (e.g. ``use_checkpoint``).
    """

    def __init__(self, variant: str = "t", num_classes: int = 150, channels: Optional[int] = None,
                 feat_proj_dim: Optional[int] = None, drop_path_rate: float = 0.0, dropout_ratio: float = 0.1,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d, **backbone_kwargs: Any) -> None:
        super().__init__()
        self.backbone = segman_encoder(variant, backbone=True, drop_path_rate=drop_path_rate, **backbone_kwargs)
        default_channels, default_proj = DECODER_SETTINGS[variant.lower()]
        self.decode_head = MMSCHead(self.backbone.embed_dims, channels or default_channels,
                                       feat_proj_dim or default_proj, num_classes, dropout_ratio,
                                       norm_layer=norm_layer, pool_norm_layer=norm_layer)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised image → logits ``(B, num_classes, H/8, W/8)``."""
        return self.decode_head(self.backbone(img))

    def encode_decode(self, img: torch.Tensor) -> torch.Tensor:
        """Logits resized bilinearly (align_corners=False) to the input size, as mmseg does."""
        return bilinear_resize(self(img), img.shape[-2:])
