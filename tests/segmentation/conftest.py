"""Fixtures for the mmseg plugin tests: a tiny toy dataset, one torch thread (helpers live in
``segmentation_testing.py``)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segmentation_testing import load_tool


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> Path:
    """8 training and 2 validation 224×224 toy images in ADE20K layout."""
    make = load_tool("make_toy_dataset")
    return make.make_toy_dataset(tmp_path_factory.mktemp("toy") / "toy_shapes", n_train=8, n_val=2, size=224,
                                 seed=1)
