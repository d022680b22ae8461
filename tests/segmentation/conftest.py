"""Fixtures for the mmseg plugin tests: paths, a tiny toy dataset, one torch thread."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SEGMENTATION = REPO / "segmentation"
CONFIGS = SEGMENTATION / "local_configs"
sys.path.insert(0, str(SEGMENTATION / "tools"))


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> Path:
    """8 training and 2 validation 224×224 toy images in ADE20K layout."""
    from make_toy_dataset import make_toy_dataset

    return make_toy_dataset(tmp_path_factory.mktemp("toy") / "toy_shapes", n_train=8, n_val=2, size=224, seed=1)


def run_tool(tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``segmentation/tools/<tool>`` as a user would, from ``segmentation/``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(SEGMENTATION / "tools" / tool), *args], cwd=SEGMENTATION,
                          env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc
