"""Fixtures for the ImageNet training tests: one torch thread and a tiny synthetic ImageFolder set."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from classification_testing import load_script

# Tiny inputs: extra threads only add overhead (and oversubscribe a shared machine).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """2 classes × (2 train + 1 val) images of 64×64: two steps of batch 2 per epoch."""
    make = load_script("make_synthetic_imagenet")
    return make.make_synthetic_imagenet(tmp_path_factory.mktemp("data") / "synthetic", num_classes=2,
                                        train_per_class=2, val_per_class=1, size=64, seed=0)
