"""pytest configuration for the ``segman.models`` tests (helpers live in ``model_testing.py``)."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))  # make ``model_testing`` importable without packages

# Small inputs: extra threads only add overhead (and the suite must stay quick on busy machines).
torch.set_num_threads(1)
