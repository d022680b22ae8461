"""Numerical ops of SegMAN, one public function each, with pluggable backends.

``torch`` is the exact reference backend (CPU and GPU); faster GPU backends plug into the same
functions.  See :mod:`segman.ops.dispatch` for selection and overrides.
"""
from .cross_scan import cross_merge, cross_scan
from .dispatch import BackendError, force_backend
from .neighborhood_attention import neighborhood_attention_2d
from .resize import bilinear_resize
from .selective_scan import selective_scan
from .ss2d import ss2d_scan

__all__ = ["selective_scan", "cross_scan", "cross_merge", "ss2d_scan", "neighborhood_attention_2d",
           "bilinear_resize", "force_backend", "BackendError"]
