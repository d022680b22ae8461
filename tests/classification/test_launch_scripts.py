"""scripts/train_segman-{t,s,b,l}.sh: one body (scripts/train_imagenet.sh) that launches classification/train.py
under torchrun with the variant's model, the recipe's GPU count and the data root.  A stand-in ``PYTHON``
prints the launch command instead of running it (it runs the recipe lookup with the real interpreter)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from classification_testing import CLASSIFICATION, SCRIPTS
from recipes import RECIPES


@pytest.fixture
def launch(tmp_path):
    python = tmp_path / "python"
    python.write_text(f'#!/usr/bin/env bash\nif [ "$1" = "-" ]; then exec "{sys.executable}" "$@"; fi\necho "$@"\n')
    python.chmod(0o755)

    def run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
        environ = {k: v for k, v in os.environ.items() if k not in ("GPUS", "DATA")}
        return subprocess.run(["bash", str(SCRIPTS / script), *args], env={**environ, "PYTHON": str(python), **env},
                              capture_output=True, text=True, timeout=60)
    return run


@pytest.mark.parametrize("variant", "tsbl")
def test_each_variant_launches_its_model_on_the_recipe(launch, variant):
    model = f"SegMANEncoder_{variant}"
    proc = launch(f"train_segman-{variant}.sh")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [
        "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={RECIPES[model].gpus}",
        str(CLASSIFICATION / "train.py"), "--model", model, "--data-dir", "data/imagenet"]


def test_gpus_data_and_options_as_arguments_or_environment(launch):
    args = launch("train_segman-s.sh", "4", "/data/imagenet", "--batch-size", "128").stdout.split()
    assert "--nproc_per_node=4" in args and args[-4:] == ["--data-dir", "/data/imagenet", "--batch-size", "128"]
    args = launch("train_segman-b.sh", "--resume", "last.pth.tar", GPUS="2", DATA="/d").stdout.split()
    assert "--nproc_per_node=2" in args and args[-4:] == ["--data-dir", "/d", "--resume", "last.pth.tar"]


def test_unknown_model_names_the_variants(launch):
    proc = launch("train_imagenet.sh", "SegMANEncoder_x")
    assert proc.returncode != 0 and "unknown model 'SegMANEncoder_x'" in proc.stderr and proc.stdout == ""
    assert launch("train_imagenet.sh").returncode == 2  # usage
