"""mmseg backbones ``SegMANEncoder_{t,s,b,l,l2}`` (docs/model.md §2): factories over ``segman.models``.

The original registered factory functions, not the class, so configs name a variant
(``type='SegMANEncoder_b'``).  ``pretrained`` names an ImageNet checkpoint of the original
training (``state_dict_ema`` preferred); it is checked when the model is built, so a wrong path
fails before any data is loaded, and loaded by ``init_weights()`` with every backbone key
matched (classifier keys are dropped).
"""
from __future__ import annotations

import inspect
import os.path as osp
from typing import Any, Optional

from mmseg.models.builder import BACKBONES

from segman.models import SegMANEncoder, load_encoder_checkpoint, variant_config

from .config_checks import reject_unknown_arguments

# style='pytorch' and similar mmseg conventions are accepted and ignored, as upstream did.
_IGNORED = ('style',)
_ACCEPTED = tuple(p for p in inspect.signature(SegMANEncoder.__init__).parameters if p not in ('self', 'backbone'))


class MMSegSegMANEncoder(SegMANEncoder):
    """The backbone form of :class:`SegMANEncoder` plus mmseg's ``init_weights()`` hook.

    Args:
        pretrained: ImageNet checkpoint to load in ``init_weights()``, or None.
        **kwargs: :class:`SegMANEncoder` arguments (the variant's widths, ``drop_path_rate``, ...).
    """

    def __init__(self, pretrained: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(backbone=True, **kwargs)
        self.pretrained = pretrained

    def init_weights(self) -> None:
        if self.pretrained:
            load_encoder_checkpoint(self, self.pretrained, strict=True)


def _backbone_factory(variant: str):
    name = f'SegMANEncoder_{variant}'

    def build(pretrained: Optional[str] = None, **kwargs: Any) -> MMSegSegMANEncoder:
        reject_unknown_arguments(name, kwargs, _ACCEPTED + _IGNORED)
        for key in _IGNORED:
            kwargs.pop(key, None)
        if pretrained is not None and not osp.isfile(pretrained):
            raise FileNotFoundError(
                f"ImageNet checkpoint '{pretrained}' not found (relative to {osp.abspath('.')}). Put the "
                f"official file there (see pretrained/README.md), or train from scratch with "
                f"--cfg-options model.backbone.pretrained=None")
        return MMSegSegMANEncoder(pretrained=pretrained, **{**variant_config(variant), **kwargs})

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"SegMAN-{variant.upper()} backbone (four maps at strides 4-32) for mmseg configs."
    return build


for _variant in ('t', 's', 'b', 'l', 'l2'):
    BACKBONES.register_module(module=_backbone_factory(_variant))
