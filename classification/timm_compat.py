"""Fixes for timm's data pipeline on current Pillow, applied by ``train.py`` before it builds its
loaders (each with a test in ``tests/classification/test_timm_compat.py``).

1. **Posterize to 0 bits.** The recipe's RandAugment (``rand-m9-mstd0.5-inc1``) uses timm's
   ``PosterizeIncreasing``, which keeps ``4 - int(4 · level / 10)`` bits: 0 bits at level 10, which
   magnitude 9 with noise of std 0.5 reaches on about 2 % of its draws.  Pillow 13 rejects
   ``ImageOps.posterize(img, 0)`` ("bits must be between or equal to 1 and 8"); older Pillow
   returned a black image.  The loader worker raised and the run stopped, within the first
   thousand ImageNet batches.  Keeping no bits is the black image, which the fix returns.
"""
from __future__ import annotations

from PIL import Image, ImageOps
from timm.data import auto_augment

__all__ = ["apply", "posterize"]

_POSTERIZE_OPS = ("Posterize", "PosterizeIncreasing", "PosterizeOriginal")


def posterize(img: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    """timm's posterize op; ``bits_to_keep <= 0`` gives the black image older Pillow produced."""
    if bits_to_keep <= 0:
        return img.point([0] * 256 * len(img.getbands()))
    return auto_augment.posterize(img, bits_to_keep, **kwargs)


def _pillow_posterizes_to_zero_bits() -> bool:
    try:
        ImageOps.posterize(Image.new("L", (1, 1)), 0)
    except ValueError:
        return False
    return True


def apply() -> list[str]:
    """Patch timm's RandAugment/AutoAugment op table where this Pillow needs it (idempotent).
    Returns the names of the ops it replaced.  Ops built before the call keep the old function."""
    if _pillow_posterizes_to_zero_bits():
        return []
    patched = []
    for name in _POSTERIZE_OPS:
        if name in auto_augment.NAME_TO_OP and auto_augment.NAME_TO_OP[name] is not posterize:
            auto_augment.NAME_TO_OP[name] = posterize
            patched.append(name)
    return patched
