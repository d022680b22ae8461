"""Helpers for the ImageNet training tests (fixtures are in ``conftest.py``)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from file_modules import load_file_module

REPO = Path(__file__).resolve().parents[2]
CLASSIFICATION = REPO / "classification"
SCRIPTS = REPO / "scripts"
# The scripts import their siblings (recipes, imagefolder, validate): pyproject.toml puts classification/ on
# the path, as running a script from there does.

# One thread per process: the tests are tiny and the machine may be shared.
SUBPROCESS_ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHON=sys.executable)


def load_script(name: str) -> ModuleType:
    """``classification/<name>.py`` as module ``segman_classification_<name>`` (``train`` would
    clash with ``segmentation/tools/train.py``)."""
    return load_file_module(f"segman_classification_{name}", CLASSIFICATION / f"{name}.py")


def train_argv(data: Path, output: Path, *extra: str) -> list[str]:
    """SegMAN-T, batch 2, no loader workers, 2 epochs (1 of warmup, no cooldown), no progress bars."""
    return ["--data-dir", str(data), "--model", "SegMANEncoder_t", "--batch-size", "2", "--workers", "0",
            "--epochs", "2", "--cooldown-epochs", "0", "--warmup-epochs", "1", "--seed", "0",
            "--output", str(output), "--no-progress", *extra]


def run(*command: str, cwd: Path = REPO, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command as a user would, one thread per process."""
    proc = subprocess.run(list(command), cwd=cwd, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{command} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc
