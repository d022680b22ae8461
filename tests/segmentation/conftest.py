"""Fixtures for the mmseg plugin tests: a tiny toy dataset, a model trained on it, one torch thread (helpers live in
``segmentation_testing.py``)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segmentation_testing import TOY, data_options, load_tool, run_tool


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


@pytest.fixture(scope="session")
def trained(toy_root, tmp_path_factory):
    """``(work dir, process)`` of two training iterations with evaluation at the end and a checkpoint per
    iteration (with ``--cuda-graph``, which on the CPU says so and trains eagerly)."""
    work = tmp_path_factory.mktemp("train")
    proc = run_tool("train.py", TOY, "--work-dir", str(work), "--seed", "0", "--cuda-graph", "--cfg-options",
                    *data_options(toy_root), "runner.max_iters=2", "checkpoint_config.interval=1",
                    "evaluation.interval=2", "lr_config.warmup_iters=1")
    return work, proc
