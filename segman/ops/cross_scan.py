"""Four-direction 2-D scan order and its exact adjoint (docs/model.md §4.2).

Directions ``k`` of ``cross_scan``: 0 row-major (index ``h*W + w``), 1 column-major
(``w*H + h``), 2 reversed row-major, 3 reversed column-major.  ``cross_merge`` maps each
direction back to row-major order and sums, so ``<cross_scan(x), y> == <x, cross_merge(y)>``.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import library
from ._checks import check_float
from .dispatch import Backend, exporting_to_onnx, kernel_can_run, runs_anywhere, select
from .torch_backend import cross_scan as reference


def _runs(op, backend: str):
    return lambda t: op(t, backend)


# The reference's views while exporting to ONNX; then fastest first: one Triton pass (read once, write
# once) beats the reference's stack of flips and transposes (docs/performance.md).
_TRITON_CAN_RUN = kernel_can_run("cross_scan", "triton")  # cross_merge's kernels live beside cross_scan's
SCAN_BACKENDS = [Backend("onnx", exporting_to_onnx, reference.cross_scan),
                 Backend("triton", _TRITON_CAN_RUN, _runs(library.cross_scan_op, "triton")),
                 Backend("torch", runs_anywhere, _runs(library.cross_scan_op, "torch"))]
MERGE_BACKENDS = [Backend("onnx", exporting_to_onnx, reference.cross_merge),
                  Backend("triton", _TRITON_CAN_RUN, _runs(library.cross_merge_op, "triton")),
                  Backend("torch", runs_anywhere, _runs(library.cross_merge_op, "torch"))]


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
