"""The CUDA selective-scan kernels compile with this machine's nvcc, without a GPU or torch's build.

``kernels/selective_scan/csrc/*.cu`` hold only device code and launchers (no torch headers), so nvcc
can build them alone.  One dtype file, for sm_90 (float4 atomics) and sm_80 (scalar atomics): every
kernel template of both code paths is instantiated.  Skipped where nvcc is not installed; the full
extension build and its GPU tests run on the GPU machines.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[2] / "kernels" / "selective_scan" / "csrc"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_scan_kernels_compile_for_sm80_and_sm90(tmp_path):
    cmd = ["nvcc", "-std=c++17", "-O3", "-c", str(CSRC / "selective_scan_bf16.cu"), "-o", str(tmp_path / "scan.o"),
           "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "warning" not in proc.stderr.lower(), proc.stderr[-4000:]
