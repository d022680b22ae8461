"""Backends that call the optional compiled CUDA extension ``segman_selective_scan``.

The extension is imported once, on first use; without it the ``cuda`` backend reports
``the CUDA extension is not installed: pip install kernels/selective_scan`` and the other backends run.
"""
