"""2-D neighborhood attention with relative position bias (NATTEN 0.17 unfused semantics).

docs/model.md §3.2.  Each query ``(i, j)`` attends to a ``K×K`` window of keys.  Along each axis the
pixels are split into ``dilation`` groups (``i mod dilation``); inside its group (group
coordinate ``i' = i // dilation``, group length ``n_g``) the window starts at
``clamp(i' - K//2, 0, n_g - K)``: windows shift inwards at the borders instead of padding.
With dilation 1 this is ``clamp(i - K//2, 0, H - K)``.  The bias for key ``a`` of the window is
``rpb[head, (start + a - i') + K - 1, ...]``, i.e. indexed by key minus query.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import library
from ._checks import check_float, check_same, check_shape
from .dispatch import Backend, exporting_to_onnx, kernel_can_run, runs_anywhere, select
from .torch_backend import neighborhood_attention as reference


def _run(backend: str):
    def run(q, k, v, kernel_size, dilation, rpb, scale):
        return library.neighborhood_attention_2d_op(q, k, v, kernel_size, dilation, rpb, scale, backend)[0]
    return run


# The reference's tensor ops while exporting to ONNX; then fastest first.  natten runs only without rpb
# and with head dims its fused kernels take (never for SegMAN's RPB attention); triton covers
# fp16/bf16/fp32 on CUDA with dilation 1; torch takes the rest.
BACKENDS = [Backend("onnx", exporting_to_onnx, lambda *args: reference.forward(*args, export=True)[0]),
            Backend("natten", kernel_can_run("neighborhood_attention_2d", "natten"), _run("natten")),
            Backend("triton", kernel_can_run("neighborhood_attention_2d", "triton"), _run("triton")),
            Backend("torch", runs_anywhere, _run("torch"))]


def neighborhood_attention_2d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int,
                              dilation: int = 1, rpb: Optional[torch.Tensor] = None,
                              scale: Optional[float] = None, backend: Optional[str] = None) -> torch.Tensor:
    r"""Neighborhood attention over a 2-D map, optionally with relative position bias.

    Equivalent to, for every query pixel ``(i, j)`` with window rows ``R(i)`` and columns ``S(j)``::

        logits[a, b] = scale * q[i, j] · k[R(i)[a], S(j)[b]] + rpb[h, R(i)[a] - i + K - 1, S(j)[b] - j + K - 1]
        out[i, j]    = softmax(logits) @ v[R(i), S(j)]

    (offsets in dilation-group coordinates when ``dilation > 1``).

    Args:
        q, k, v: ``(B, heads, H, W, head_dim)``, one dtype and device, any head_dim.
        kernel_size: odd window size ``K``; ``K * dilation`` must not exceed H or W.
        dilation: window dilation (>= 1).
        rpb: optional ``(heads, 2K-1, 2K-1)`` relative position bias.
        scale: multiplies ``q·k`` before the bias is added; None means ``head_dim ** -0.5``
            (SegMAN pre-scales q and passes 1.0).
        backend: force ``"natten"`` (installed NATTEN with its CUDA library; no rpb),
            ``"triton"`` (CUDA, dilation 1, head_dim <= 128, kernel_size <= 13) or ``"torch"``
            (the exact reference, CPU and GPU); None picks the first in that order that supports
            the inputs.

    Returns:
        ``(B, heads, H, W, head_dim)`` in the dtype of ``q``.  No ``(H*W)²`` matrix is formed.
    """
    op = "neighborhood_attention_2d"
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float(name, t)
        if t.dim() != 5:
            raise ValueError(f"{op}: {name} must be (batch, heads, H, W, head_dim), got shape {tuple(t.shape)}")
    check_shape("k", k, q.shape, " (same as q)")
    check_shape("v", v, q.shape, " (same as q)")
    check_same(op, "dtype", [("q", q), ("k", k), ("v", v)])
    check_same(op, "device", [("q", q), ("k", k), ("v", v), ("rpb", rpb)])
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"{op}: kernel_size must be an odd positive int, got {kernel_size!r}")
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"{op}: dilation must be an int >= 1, got {dilation!r}")
    heads, height, width = q.shape[1:4]
    span = kernel_size * dilation
    if height < span or width < span:
        raise ValueError(
            f"{op}: the feature map ({height}×{width}) is smaller than the attention window "
            f"(kernel_size {kernel_size} × dilation {dilation} = {span}); use a larger input image "
            f"or a smaller kernel_size")
    if rpb is not None:
        check_float("rpb", rpb)
        check_shape("rpb", rpb, (heads, 2 * kernel_size - 1, 2 * kernel_size - 1), " (heads, 2K-1, 2K-1)")
    if scale is None:
        scale = q.shape[-1] ** -0.5
    args = (q, k, v, kernel_size, dilation, rpb, float(scale))
    return select(op, BACKENDS, backend, *args).run(*args)
