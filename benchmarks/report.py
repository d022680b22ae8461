"""Where the benchmarks write their tables, and the line that says what produced them.

Each benchmark overwrites ``benchmarks/results/<script>.md`` with the table of its last run, headed by
``environment()``: the GPU and its driver (or the CPU and its threads), torch, Triton, the commit
and the date.  ``benchmarks/README.md`` explains how each script measures.
"""
from __future__ import annotations

import datetime
import importlib.util
import os
import platform
import subprocess
from pathlib import Path
from typing import Optional

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def commit() -> str:
    """The checked-out commit (``SEGMAN_COMMIT`` where the tree has no git metadata), or ``?``."""
    return os.environ.get("SEGMAN_COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
        cwd=Path(__file__).parent).stdout.strip() or "?"


def _triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "none"
    return triton.__version__


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _driver() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.split()
    except OSError:  # no nvidia-smi on this machine
        out = []
    return out[0] if out else "?"


def environment(device: str = "cuda", threads: Optional[int] = None) -> str:
    """One line: the device the numbers come from, torch, Triton and the CUDA scan extension (GPU only),
    the commit and today's date.

    ``device="cuda"`` names GPU 0 and the NVIDIA driver; ``device="cpu"`` names the CPU model,
    ``threads`` (torch's intra-op thread count when not given) and the load average, since other
    processes on the machine slow a CPU benchmark down."""
    if device == "cpu":
        threads = torch.get_num_threads() if threads is None else threads
        machine = (f"{_cpu_name()}, {threads} threads, load average {os.getloadavg()[0]:.1f} at the start, "
                   f"torch {torch.__version__}")
    else:
        extension = "built" if importlib.util.find_spec("segman_selective_scan") else "not built"
        machine = (f"{torch.cuda.get_device_properties(0).name}, driver {_driver()}, "
                   f"torch {torch.__version__}, Triton {_triton_version()}, CUDA scan extension {extension}")
    return f"{machine}, commit {commit()}, {datetime.date.today().isoformat()}"


def write_results(name: str, text: str) -> Path:
    """Overwrite ``benchmarks/results/<name>.md`` with ``text`` and say so."""
    path = RESULTS_DIR / f"{name}.md"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text if text.endswith("\n") else text + "\n")
    print(f"wrote {path}")
    return path
