"""NATTEN backends of ``segman.ops`` (NATTEN >= 0.20; imported lazily, only when NATTEN can run)."""
from __future__ import annotations

from typing import Optional

from . import neighborhood_attention


def unavailable(*args, **kwargs) -> Optional[str]:
    """Always None: ``can_run`` makes its cheap checks (rpb, device, dtype) before it imports NATTEN."""
    return None


__all__ = ["neighborhood_attention", "unavailable"]
