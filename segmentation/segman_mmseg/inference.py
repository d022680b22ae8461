"""A small Python API: build a segmentor from a config and checkpoint, predict, draw the result.

    from segman_mmseg.inference import load_segmentor, predict, overlay
    model = load_segmentor('local_configs/segman/tiny/segman_t_ade.py', 'segman_t_ade.pth')
    seg = predict(model, 'demo.jpg')            # (H, W) int64 class indices
    picture = overlay(model, 'demo.jpg', seg)   # (H, W, 3) uint8 BGR, prediction blended in
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence, Union

import mmcv
import numpy as np
import torch
from mmcv.utils import Config

import segman_mmseg  # noqa: F401  (registration)
from segman.models import CheckpointError, compile_regions, load_checkpoint_file, load_segmentor_checkpoint
from segman_mmseg.config_checks import load_config
from segman_mmseg.loading import too_dark_for_8_bits

ImageLike = Union[str, np.ndarray]


def build_segmentor_from_checkpoint(cfg: Config, checkpoint: str, classes: Optional[Sequence[str]] = None,
                                    palette: Optional[Sequence[Sequence[int]]] = None) -> torch.nn.Module:
    """Build ``cfg.model`` and load ``checkpoint`` with every key matched.

    ``CLASSES`` / ``PALETTE`` come from the checkpoint's meta, else from the arguments.  The
    backbone's ImageNet ``pretrained`` file is not needed (the checkpoint holds every weight).
    """
    from mmseg.models import build_segmentor

    cfg.model.backbone.pretrained = None
    model = build_segmentor(cfg.model, test_cfg=cfg.get('test_cfg'))
    ckpt = load_checkpoint_file(checkpoint)
    try:
        load_segmentor_checkpoint(model, ckpt, strict=True)
    except CheckpointError as e:
        raise CheckpointError(
            f"{e}\nThe checkpoint was trained with a different model; check the config "
            f"(e.g. a 150-way conv_seg needs model.decode_head.num_classes=150).") from None
    meta = ckpt.get('meta', {}) if isinstance(ckpt, dict) else {}
    model.CLASSES = meta.get('CLASSES', classes)
    model.PALETTE = meta.get('PALETTE', palette)
    return model


def load_segmentor(config: Union[str, Config], checkpoint: str, device: str = 'cpu',
                   compile: Optional[str] = None) -> torch.nn.Module:
    """A segmentor in eval mode on ``device``, ready for :func:`predict`.  ``compile``: a
    ``torch.compile`` mode (``"default"``, ``"reduce-overhead"`` for CUDA-graph replay, ...) to compile
    its blocks with (:func:`segman.models.compile_regions`; once per input size), or None."""
    from mmcv.cnn.utils import revert_sync_batchnorm

    cfg = load_config(config) if isinstance(config, str) else config.copy()
    model = revert_sync_batchnorm(build_segmentor_from_checkpoint(cfg, checkpoint))
    model.cfg = cfg  # mmseg's inference_segmentor reads the test pipeline from here
    if compile is not None:
        compile_regions(model, mode=compile)
    return model.to(device).eval()


def predict(model: torch.nn.Module, image: ImageLike) -> np.ndarray:
    """Class index map ``(H, W)`` of an image path or BGR ``(H, W, 3)`` array (uint8, or float in 0..255).

    Raises ``ValueError`` for an image with NaN or infinite values (they would spread to every output
    pixel); warns for a 16-bit file that 8-bit conversion would turn nearly black."""
    from mmseg.apis import inference_segmentor

    if isinstance(image, str):
        name = image
        stored = mmcv.imread(image, flag='unchanged')  # a clear error for a missing file
        if stored is None:
            raise ValueError(f'{name}: could not decode the image')
        dark = too_dark_for_8_bits(stored)
        if dark:
            warnings.warn(f'{name}: {dark}; the prediction will be of a dark image')
        image = mmcv.imread(image)  # converted as the test pipeline converts it
    elif np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        raise ValueError(f'the image has {int((~np.isfinite(image)).sum())} NaN or infinite values; '
                         f'replace them (e.g. np.nan_to_num) before predicting')
    return inference_segmentor(model, image)[0]


def overlay(model: torch.nn.Module, image: ImageLike, seg: np.ndarray, opacity: float = 0.5,
            out_file: Optional[str] = None) -> np.ndarray:
    """The image with the colour-coded prediction blended in (BGR uint8); saved if ``out_file``."""
    if not 0 < opacity <= 1:
        raise ValueError(f'opacity must be in (0, 1], got {opacity}')
    return model.show_result(image, [seg], palette=model.PALETTE, opacity=opacity, show=False,
                             out_file=out_file)
