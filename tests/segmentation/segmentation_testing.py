"""Helpers for the mmseg plugin tests (fixtures are in ``conftest.py``): paths, the tools as modules and as
command lines."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from file_modules import load_file_module

REPO = Path(__file__).resolve().parents[2]
SEGMENTATION = REPO / "segmentation"
CONFIGS = SEGMENTATION / "local_configs"
TOOLS = SEGMENTATION / "tools"
TOY = str(CONFIGS / "segman/tiny/segman_t_toy.py")


def load_tool(name: str) -> ModuleType:
    """``segmentation/tools/<name>.py`` as module ``segman_tools_<name>`` (``train`` would clash with
    ``classification/train.py``, ``test`` with Python's own package)."""
    return load_file_module(f"segman_tools_{name}", TOOLS / f"{name}.py")


def run_tool(tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``segmentation/tools/<tool>`` as a user would, from ``segmentation/``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(TOOLS / tool), *args], cwd=SEGMENTATION,
                          env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def data_options(root) -> list[str]:
    """``--cfg-options`` pointing the toy config at the test set ``root``, small and single-process."""
    options = [f"data.{split}.data_root={root}" for split in ("train", "val", "test")]
    return options + ["data.samples_per_gpu=2", "data.workers_per_gpu=0", "log_config.interval=1"]
