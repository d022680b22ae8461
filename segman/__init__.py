"""SegMAN: omni-scale context modelling with state space models and local attention (CVPR 2025).

``segman.ops`` holds the numerical ops (selective scan, cross-scan/merge, neighborhood attention)
and ``segman.models`` the encoder and decoder.  Nothing here imports mmcv or mmseg.
"""
__version__ = "0.1.0"
