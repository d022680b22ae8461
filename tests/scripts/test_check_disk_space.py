"""scripts/check_disk_space.py: `make install` stops at once, with the numbers, on a disk too small for
the environment (pip would fail minutes in with "No space left on device")."""
from __future__ import annotations

import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest

import check_disk_space

REPO = Path(__file__).resolve().parents[2]

Usage = namedtuple("Usage", "total used free")


@pytest.fixture
def free_gib(monkeypatch):
    """Sets the free space every disk reports, in GiB."""
    def set_free(gib: float):
        monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(0, 0, int(gib * check_disk_space.GIB)))
    return set_free


def test_a_new_environment_needs_the_full_room(tmp_path, free_gib, capsys):
    venv = tmp_path / "not" / "yet" / ".venv"  # measured on the nearest existing parent
    free_gib(3.7)
    assert check_disk_space.main([str(venv)]) == 1
    message = capsys.readouterr().err
    assert "3.7 GiB free" in message and str(tmp_path) in message and "needs about 7 GiB" in message
    assert "make VENV=" in message
    free_gib(7.5)
    assert check_disk_space.main([str(venv)]) == 0


def test_a_rerun_over_an_installed_torch_needs_little(tmp_path, free_gib):
    venv = tmp_path / ".venv"
    torch_dir = venv / "lib" / "python3.11" / "site-packages" / "torch"
    torch_dir.mkdir(parents=True)
    (torch_dir / "__init__.py").write_text("")
    free_gib(1.5)
    assert check_disk_space.main([str(venv)]) == 0
    free_gib(0.5)
    assert check_disk_space.main([str(venv), "--need-gib-with-torch", "1"]) == 1


def test_runs_as_the_makefile_calls_it(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "check_disk_space.py"), str(tmp_path / ".venv"),
                           "--need-gib", "1e9"], capture_output=True, text=True)
    assert proc.returncode == 1 and "No space" not in proc.stderr and "GiB free" in proc.stderr
