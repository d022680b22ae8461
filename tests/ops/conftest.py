"""pytest configuration for the ``segman.ops`` tests (helpers live in ``ops_testing.py``)."""
import sys

import pytest
import torch

# Tiny shapes: extra threads only add overhead (and the suite must stay quick on busy machines).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same global RNG state (tests also use explicit generators)."""
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _private_tuning_file(monkeypatch, tmp_path):
    """Autotuning results go to a fresh folder: none read from earlier runs, none left behind."""
    monkeypatch.setenv("SEGMAN_CACHE_DIR", str(tmp_path))
    tuned = sys.modules.get("segman.ops.triton_backend.neighborhood_attention")
    if tuned is not None:
        monkeypatch.setattr(tuned, "_STORED", None)
    yield


@pytest.fixture(autouse=True)
def _no_backend_override(monkeypatch):
    """Tests see automatic backend selection unless they set an override themselves."""
    monkeypatch.delenv("SEGMAN_OPS_BACKEND", raising=False)
    yield
