"""Input checks shared by the public ops: each failure is a ValueError that names the problem."""
from __future__ import annotations

from typing import Iterable, Optional

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_shape(name: str, t: torch.Tensor, shape: tuple, hint: str = "") -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}{hint}")


def check_float(name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got {t.dtype}")


def check_same(op: str, attr: str, named: Iterable[tuple[str, Optional[torch.Tensor]]]) -> None:
    """All non-None tensors agree on ``attr`` ("dtype" or "device")."""
    present = [(n, t) for n, t in named if t is not None]
    values = {getattr(t, attr) for _, t in present}
    if len(values) > 1:
        listing = ", ".join(f"{n}: {getattr(t, attr)}" for n, t in present)
        fix = "cast them with .to(dtype)" if attr == "dtype" else "move them with .to(device)"
        raise ValueError(f"{op}: inputs must share one {attr} ({listing}); {fix}")


def check_floats(named: Iterable[tuple[str, Optional[torch.Tensor]]]) -> None:
    """:func:`check_float` for every tensor given (None skipped)."""
    for name, t in named:
        if t is not None:
            check_float(name, t)


def check_scan_parameters(op: str, data: tuple[str, torch.Tensor], delta: torch.Tensor, A: torch.Tensor,
                          B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor],
                          delta_bias: Optional[torch.Tensor], *, delta_shape: tuple, delta_hint: str,
                          channels: int, a_hint: str, groups: int) -> None:
    """The checks ``selective_scan`` and ``ss2d_scan`` share, once each has checked its data's layout.

    ``data`` is the scanned input with its name; ``channels`` and ``groups`` count the scanned sequences
    and their groups, ``delta_shape`` is ``(batch, channels, length)``; d_state is ``B.shape[2]``.
    """
    batch, length, d_state = delta_shape[0], delta_shape[-1], B.shape[2]
    if length == 0 or d_state == 0:
        raise ValueError(f"{op}: the sequence length and d_state must be at least 1, got length {length} and "
                         f"d_state {d_state}")
    check_shape("delta", delta, delta_shape, delta_hint)
    check_shape("A", A, (channels, d_state), a_hint)
    check_shape("B", B, (batch, groups, d_state, length))
    check_shape("C", C, (batch, groups, d_state, length), " (same as B)")
    if D is not None:
        check_shape("D", D, (channels,))
    if delta_bias is not None:
        check_shape("delta_bias", delta_bias, (channels,))
    check_same(op, "dtype", [data, ("delta", delta), ("B", B), ("C", C)])
    check_same(op, "device", [data, ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D),
                              ("delta_bias", delta_bias)])
