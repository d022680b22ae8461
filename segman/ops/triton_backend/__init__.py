"""Triton GPU backends of ``segman.ops``.

Each module here imports triton at its top, so the package loads them on first use (attribute access, e.g.
``triton_backend.cross_scan``), and only after :func:`unavailable` found CUDA inputs and triton installed.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Optional

import torch

# Looked up once: torch.compile traces backend selection, and a failed import there would break the graph.
HAS_TRITON = importlib.util.find_spec("triton") is not None

MODULES = ("cross_scan", "neighborhood_attention", "selective_scan", "ss2d_scan")


def unavailable(x: torch.Tensor, *args, **kwargs) -> Optional[str]:
    """None if the Triton kernels can run on the device of ``x`` (the op's first input), else why not."""
    if x.device.type != "cuda":
        return f"inputs are on {x.device.type}"
    if not HAS_TRITON:
        return "triton is not installed"
    return None


def __getattr__(name: str):
    if name in MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
