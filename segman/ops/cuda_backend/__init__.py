"""Backends that call the optional compiled CUDA extension ``segman_selective_scan``.

The extension is imported once, on first use; without it the ``cuda`` backend reports
``the CUDA extension is not installed: pip install kernels/selective_scan`` and the other backends run.
"""
from __future__ import annotations

import importlib.util
from typing import Optional

from . import selective_scan
from .selective_scan import INSTALL_HINT

# Looked up once: torch.compile traces backend selection, and a failed import there would break the graph.
HAS_CUDA_EXTENSION = importlib.util.find_spec("segman_selective_scan") is not None


def unavailable(*args, **kwargs) -> Optional[str]:
    """None if the extension is installed (whether it loads and takes the inputs is ``can_run``'s question)."""
    return None if HAS_CUDA_EXTENSION else INSTALL_HINT


__all__ = ["selective_scan", "unavailable", "HAS_CUDA_EXTENSION", "INSTALL_HINT"]
