"""pytest configuration shared by every test folder (the settings are in pyproject.toml)."""
import pytest


def pytest_collection_modifyitems(items):
    """Tests of the ``*_gpu.py`` files carry the ``gpu`` marker."""
    for item in items:
        if item.path.name.endswith("_gpu.py"):
            item.add_marker(pytest.mark.gpu)
