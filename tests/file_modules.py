"""Loading a script as a module from its file, under a name of the caller's choosing (the repository has
two ``train.py`` and a ``test.py`` that would shadow each other, or Python's own package, on sys.path)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_file_module(module_name: str, path: Path) -> ModuleType:
    """``path`` imported once as ``module_name`` (later calls return the same module)."""
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]
