"""``cuda`` backend of ``segman.ops.selective_scan``: the compiled kernels of kernels/selective_scan.

The extension (module ``segman_selective_scan._C``) is optional.  Its import is tried once; when it
fails, :func:`can_run` returns the reason with the install command and the dispatcher moves on.
See kernels/selective_scan/csrc/selective_scan.cuh for the algorithm.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._layout import last_dim_contiguous

INSTALL_HINT = "the CUDA extension is not installed: pip install kernels/selective_scan"
MAX_D_STATE = 16

_ext = None
_import_error: Optional[str] = None
_tried = False


def _load():
    """The extension module, or None (the import is attempted once per process)."""
    global _ext, _import_error, _tried
    if not _tried:
        _tried = True
        try:
            import segman_selective_scan as ext
            _ext = ext
        except ImportError as e:  # not built / built for another torch
            _import_error = f"{INSTALL_HINT} ({e})" if "No module named" not in str(e) else INSTALL_HINT
    return _ext


def is_available() -> bool:
    return _load() is not None


def can_run(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True) -> Optional[str]:
    """None if the CUDA kernels support the inputs, else the reason."""
    if u.device.type != "cuda":
        return f"inputs are on {u.device.type}"
    if _load() is None:
        return _import_error
    if u.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"{u.dtype} inputs are not supported (float32/float16/bfloat16 only)"
    if any(t is not None and t.dtype == torch.float64 for t in (A, D, delta_bias)):
        return "float64 parameters are not supported"
    if B.shape[2] > MAX_D_STATE:
        return f"d_state {B.shape[2]} > {MAX_D_STATE} is not supported"
    return None


def _f32(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.float().contiguous()


def states_meta(u, A, B, C) -> tuple[tuple[int, ...], torch.dtype]:
    """Shape and dtype of the chunk states that :func:`forward` returns: ``(Bt, G*Dg, chunks, N)``."""
    (bt, _, n_state, length), channels = B.shape, A.shape[0]
    return (bt, channels, -(-length // _load().CHUNK), n_state), torch.float32


def forward(u, delta, A, B, C, D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
            delta_softplus: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated inputs in (see ``segman.ops.selective_scan``); ``(Bt, G*Dg, L)`` float32 and the
    chunk states out."""
    u, delta, B, C = (last_dim_contiguous(t) for t in (u, delta, B, C))
    return tuple(_load().fwd(u, delta, _f32(A), B, C, _f32(D), _f32(delta_bias), delta_softplus))


def backward(u, delta, A, B, C, D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], delta_softplus: bool,
             states: torch.Tensor, dy: torch.Tensor):
    """``(du, ddelta, dA, dB, dC, dD, d_delta_bias)`` in the inputs' dtypes (None for absent inputs)."""
    u, delta, B, C = (last_dim_contiguous(t) for t in (u, delta, B, C))
    du, ddelta, dA, dB, dC, dD, dbias = _load().bwd(u, delta, _f32(A), B, C, _f32(D), _f32(delta_bias),
                                                    last_dim_contiguous(dy.float()), states, delta_softplus)
    return (du, ddelta, dA.to(A.dtype), dB, dC, dD.to(D.dtype) if dD is not None else None,
            dbias.to(delta_bias.dtype) if dbias is not None else None)
