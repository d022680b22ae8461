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
