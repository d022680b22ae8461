"""Memory-layout helpers shared by :mod:`segman.ops.library` and the backends."""
from __future__ import annotations

from typing import Optional

import torch


def last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    """``t`` when its last dim is contiguous (what the kernels index along), else a contiguous copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


def dense(*tensors: Optional[torch.Tensor]) -> list[torch.Tensor]:
    """The given tensors, contiguous, absent ones dropped: the strides the fake implementations promise to the
    compiler."""
    return [t.contiguous() for t in tensors if t is not None]
