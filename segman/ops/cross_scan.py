"""Four-direction 2-D scan order (SPEC §2.4) and its exact adjoint (SPEC §2.5).

Directions ``k`` of ``cross_scan``: 0 row-major (index ``h*W + w``), 1 column-major
(``w*H + h``), 2 reversed row-major, 3 reversed column-major.  ``cross_merge`` maps each
direction back to row-major order and sums, so ``<cross_scan(x), y> == <x, cross_merge(y)>``.
"""
from __future__ import annotations

import importlib.util
from typing import Optional

import torch

from ._checks import check_float
from .dispatch import Backend, runs_anywhere, select


def _torch_scan(x):
    from .torch_backend.cross_scan import cross_scan as impl

    return impl(x)


def _torch_merge(y):
    from .torch_backend.cross_scan import cross_merge as impl

    return impl(y)


def _triton_can_run(x) -> Optional[str]:
    if x.device.type != "cuda":
        return f"inputs are on {x.device.type}"
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    from .triton_backend.cross_scan import can_run

    return can_run(x)


def _triton_scan(x):
    from .triton_backend.cross_scan import cross_scan as impl

    return impl(x)


def _triton_merge(y):
    from .triton_backend.cross_scan import cross_merge as impl

    return impl(y)


# Fastest first: one Triton pass (read once, write once) beats the reference's stack of flips and
# transposes (benchmarks/RESULTS.md, "GPU selective scan").
SCAN_BACKENDS = [Backend("triton", _triton_can_run, _triton_scan), Backend("torch", runs_anywhere, _torch_scan)]
MERGE_BACKENDS = [Backend("triton", _triton_can_run, _triton_merge), Backend("torch", runs_anywhere, _torch_merge)]


def cross_scan(x: torch.Tensor, backend: Optional[str] = None) -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B, 4, C, H*W)``: the map in the four scan orders."""
    check_float("x", x)
    if x.dim() != 4:
        raise ValueError(f"cross_scan: x must be (B, C, H, W), got shape {tuple(x.shape)}")
    return select("cross_scan", SCAN_BACKENDS, backend, x).run(x)


def cross_merge(y: torch.Tensor, backend: Optional[str] = None) -> torch.Tensor:
    """``(B, 4, C, H, W)`` → ``(B, C, H*W)``: direction ``k`` of ``y[:, k]`` is the length-``H*W``
    sequence of scan order ``k`` (viewed as ``H×W``); all four are mapped to row-major and summed."""
    check_float("y", y)
    if y.dim() != 5 or y.shape[1] != 4:
        raise ValueError(f"cross_merge: y must be (B, 4, C, H, W), got shape {tuple(y.shape)}")
    return select("cross_merge", MERGE_BACKENDS, backend, y).run(y)
