"""classification/timm_compat.py: RandAugment's posterize to 0 bits on Pillow that rejects it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from timm.data import auto_augment

import timm_compat

ROOT = Path(__file__).resolve().parents[2]


def _image(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (17, 23, 3), dtype=np.uint8))


def test_posterize_keeps_pillow_results_and_blackens_at_zero_bits():
    img = _image()
    for bits in (1, 4, 7):
        assert np.array_equal(np.asarray(timm_compat.posterize(img, bits)), np.asarray(ImageOps.posterize(img, bits)))
    assert timm_compat.posterize(img, 8) is img
    black = timm_compat.posterize(img, 0)
    assert black.mode == img.mode and black.size == img.size and not np.asarray(black).any()


def test_full_magnitude_posterize_increasing_runs_after_apply():
    """Level 10 of PosterizeIncreasing keeps 0 bits: the op that stopped training on Pillow 13."""
    patched = timm_compat.apply()
    assert timm_compat.apply() == []  # idempotent
    if not patched and auto_augment.NAME_TO_OP["PosterizeIncreasing"] is not timm_compat.posterize:
        pytest.skip("this Pillow posterizes to 0 bits itself; nothing to fix")
    op = auto_augment.AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10, hparams={"magnitude_std": 0})
    out = op(_image(1))
    assert not np.asarray(out).any()


def test_train_script_applies_the_fix():
    """A fresh interpreter that imports train.py has the patched op table (if this Pillow needs it)."""
    code = ("import sys; sys.path[:0] = ['classification']; import train, timm_compat; "
            "from timm.data import auto_augment as aa; "
            "print(timm_compat._pillow_posterizes_to_zero_bits() or all("
            "aa.NAME_TO_OP[n] is timm_compat.posterize for n in ('Posterize', 'PosterizeIncreasing', "
            "'PosterizeOriginal')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "True"
