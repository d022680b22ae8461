"""Neighborhood attention through NATTEN's fused kernels (``natten.na2d``, NATTEN >= 0.20).

NATTEN 0.20 dropped relative position bias and its unfused ops, and its fused kernels take only
some head dims and dtypes, so this backend runs only where the installed NATTEN supports the
call: no ``rpb``, dilation as given, CUDA tensors, NATTEN importable with its compiled library
(``libnatten``) and a fused-kernel configuration for the head dim and dtype.  ``can_run`` says
which condition failed; it imports NATTEN only after the cheap checks pass.

Layouts: ours is ``(B, heads, H, W, head_dim)``, NATTEN's is heads-last ``(B, H, W, heads,
head_dim)``; the permutes are views and NATTEN makes what it needs contiguous.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_FALLBACK_HEAD_DIMS = (32, 64, 128)  # used only if NATTEN offers no configuration query


@functools.lru_cache(maxsize=1)
def _natten():
    """``(module, None)`` or ``(None, reason)``; the import is tried once."""
    try:
        import natten
    except Exception as exc:  # ImportError, or a broken build raising at import time
        return None, f"natten is not importable ({type(exc).__name__}: {exc})"
    version = getattr(natten, "__version__", "0")
    try:
        major_minor = tuple(int(x) for x in version.split(".")[:2])
    except ValueError:
        major_minor = (0, 0)
    if major_minor < (0, 20) or not hasattr(natten, "na2d"):
        return None, f"natten {version} is too old: this backend uses natten.na2d (NATTEN >= 0.20)"
    has_lib = getattr(natten, "HAS_LIBNATTEN", None)
    if has_lib is None:
        try:
            from natten._libnatten import HAS_LIBNATTEN as has_lib
        except Exception:
            has_lib = None
    if has_lib is False:
        return None, f"natten {version} was installed without its compiled library (libnatten)"
    return natten, None


def _heads_last(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 1, 4)


def _configs(natten, name: str, t: torch.Tensor):
    fn = getattr(natten, name, None)
    return None if fn is None else list(fn(t))


def can_run(q, k, v, kernel_size, dilation, rpb, scale) -> Optional[str]:
    if rpb is not None:
        return "relative position bias (rpb) is not supported by NATTEN >= 0.20"
    if not q.is_cuda:
        return f"inputs are on {q.device.type}"
    if q.dtype not in _DTYPES:
        return f"dtype {q.dtype} is not supported (float16, bfloat16, float32)"
    natten, reason = _natten()
    if reason is not None:
        return reason
    head_dim = q.shape[-1]
    probe = _heads_last(q)
    try:
        fwd = _configs(natten, "get_configs_for_cutlass_fna", probe)
        bwd = _configs(natten, "get_bwd_configs_for_cutlass_fna", probe) if q.requires_grad else None
    except Exception as exc:
        return f"natten could not check head_dim {head_dim} / {q.dtype} ({type(exc).__name__}: {exc})"
    if fwd is None:
        if head_dim not in _FALLBACK_HEAD_DIMS:
            return f"head_dim {head_dim} is not supported by NATTEN's fused kernels ({_FALLBACK_HEAD_DIMS})"
    elif not fwd:
        return f"NATTEN has no fused kernel for head_dim {head_dim} with {q.dtype} on this GPU"
    if bwd is not None and not bwd and any(t.requires_grad for t in (q, k, v)):
        return f"NATTEN has no backward kernel for head_dim {head_dim} with {q.dtype} on this GPU"
    return None


def _na2d(q, k, v, kernel_size: int, dilation: int, scale: float, return_lse: bool):
    """NATTEN's ``na2d`` on our layout: ``out`` (and ``lse`` ``(B, heads, H, W)``) in our layout."""
    natten, reason = _natten()
    if reason is not None:
        raise RuntimeError(reason)
    result = natten.na2d(_heads_last(q), _heads_last(k), _heads_last(v), kernel_size=(kernel_size, kernel_size),
                         dilation=(dilation, dilation), scale=scale, return_lse=return_lse)
    if not return_lse:
        return result.permute(0, 3, 1, 2, 4)
    out, lse = result
    return out.permute(0, 3, 1, 2, 4), lse.permute(0, 3, 1, 2).float()


def forward(q, k, v, kernel_size: int, dilation: int, rpb: Optional[torch.Tensor], scale: float):
    """Validated inputs that ``can_run`` accepted in; the output and the log-sum-exp per query out."""
    return _na2d(q, k, v, kernel_size, dilation, scale, return_lse=True)


def backward(q, k, v, kernel_size: int, dilation: int, rpb: Optional[torch.Tensor], scale: float,
             out: torch.Tensor, lse: torch.Tensor, dout: torch.Tensor, rpb_grad: bool):
    """``(dq, dk, dv, None)`` through NATTEN's own backward (it recomputes its forward: NATTEN keeps
    its saved state inside its autograd function)."""
    with torch.enable_grad():
        inputs = [t.detach().requires_grad_() for t in (q, k, v)]
        grads = torch.autograd.grad(_na2d(*inputs, kernel_size, dilation, scale, return_lse=False), inputs, dout)
    return (*grads, None)
