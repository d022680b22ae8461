"""pytest configuration for the ``segman.models`` tests (helpers live in ``model_testing.py``)."""
import torch

# Small inputs: extra threads only add overhead (and the suite must stay quick on busy machines).
torch.set_num_threads(1)
