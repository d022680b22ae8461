"""The ops as ``torch.library`` custom ops (namespace ``segman``): fake implementations and autograd.

The public functions of :mod:`segman.ops` validate their inputs and pick a backend (plain Python on
tensor metadata, which ``torch.compile`` traces through and guards on), then call one op here with the
backend's name.  Each op runs that backend's kernels as one opaque node, so a compiled model keeps the
fast kernels, Inductor fuses the code around them, and CUDA graphs capture their launches.

Every op is a forward that also returns what its backward needs, plus a backward op::

    segman::selective_scan(u, delta, A, B, C, D?, delta_bias?, softplus, backend)   -> (y, states)
    segman::ss2d_scan(x, delta, A, B, C, D?, delta_bias?, softplus, backend)        -> (y, states)
    segman::cross_scan(x, backend) / segman::cross_merge(y, backend)                -> out
    segman::neighborhood_attention_2d(q, k, v, K, dilation, rpb?, scale, backend)   -> (out, lse)

A backend module provides ``forward`` and ``backward`` functions with these signatures (see
``torch_backend`` for the reference versions) and, for the ops with saved states, ``states_meta``:
the shape and dtype of its states, which the fake implementation needs.  A backend other than the torch
references also provides ``can_run`` (see :func:`segman.ops.dispatch.kernel_can_run`).
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Optional

import torch
from torch import Tensor

from ._layout import dense
from .torch_backend.selective_scan import compute_dtype  # the scans' output dtype, whichever backend

NAMESPACE = "segman"

# op -> backend -> module under segman.ops holding that backend's forward/backward
KERNEL_MODULES: dict[str, dict[str, str]] = {
    "selective_scan": {"torch": "torch_backend.selective_scan", "triton": "triton_backend.selective_scan",
                       "cuda": "cuda_backend.selective_scan"},
    "ss2d_scan": {"triton": "triton_backend.ss2d_scan"},
    "cross_scan": {"torch": "torch_backend.cross_scan", "triton": "triton_backend.cross_scan"},
    "neighborhood_attention_2d": {"torch": "torch_backend.neighborhood_attention",
                                  "triton": "triton_backend.neighborhood_attention",
                                  "natten": "natten_backend.neighborhood_attention"},
}


def kernels(op: str, backend: str) -> ModuleType:
    """The module implementing ``op`` on ``backend`` (imported on first use)."""
    try:
        path = KERNEL_MODULES[op][backend]
    except KeyError:
        raise ValueError(f"{NAMESPACE}::{op} has no kernels for backend {backend!r} "
                         f"(known: {sorted(KERNEL_MODULES.get(op, {}))})") from None
    return importlib.import_module(f"segman.ops.{path}")


def _present(*tensors: Optional[Tensor]) -> list[Tensor]:
    return [t for t in tensors if t is not None]


# --------------------------------------------------------------------------------------------------
# Selective scan and the fused SS2D step: same arguments, same backward structure
# --------------------------------------------------------------------------------------------------

def _define_scan(op: str, out_shape):
    """Registers ``segman::{op}`` and ``segman::{op}_backward``; ``out_shape(x, B)`` gives y's shape."""

    @torch.library.custom_op(f"{NAMESPACE}::{op}", mutates_args=())
    def forward(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                delta_bias: Optional[Tensor], delta_softplus: bool, backend: str) -> tuple[Tensor, Tensor]:
        return tuple(dense(*kernels(op, backend).forward(u, delta, A, B, C, D, delta_bias, delta_softplus)))

    @forward.register_fake
    def _(u, delta, A, B, C, D, delta_bias, delta_softplus, backend):
        shape, dtype = kernels(op, backend).states_meta(u, A, B, C)
        return u.new_empty(out_shape(u, B), dtype=compute_dtype(u, A, B, C)), u.new_empty(shape, dtype=dtype)

    @torch.library.custom_op(f"{NAMESPACE}::{op}_backward", mutates_args=())
    def backward(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                 delta_bias: Optional[Tensor], delta_softplus: bool, backend: str, states: Tensor,
                 dy: Tensor) -> list[Tensor]:
        """Gradients ``[du, ddelta, dA, dB, dC]`` then ``dD`` and ``d_delta_bias`` where given."""
        return dense(*kernels(op, backend).backward(u, delta, A, B, C, D, delta_bias, delta_softplus, states, dy))

    @backward.register_fake
    def _(u, delta, A, B, C, D, delta_bias, delta_softplus, backend, states, dy):
        return [torch.empty_like(t, memory_format=torch.contiguous_format)
                for t in _present(u, delta, A, B, C, D, delta_bias)]

    def setup_context(ctx, inputs, output):
        u, delta, A, B, C, D, delta_bias, delta_softplus, backend = inputs
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, output[1])
        ctx.delta_softplus, ctx.backend = delta_softplus, backend

    def grad(ctx, dy, _dstates):
        u, delta, A, B, C, D, delta_bias, states = ctx.saved_tensors
        grads = iter(backward(u, delta, A, B, C, D, delta_bias, ctx.delta_softplus, ctx.backend, states, dy))
        return (*(next(grads) for _ in range(5)), None if D is None else next(grads),
                None if delta_bias is None else next(grads), None, None)

    forward.register_autograd(grad, setup_context=setup_context)
    return forward


selective_scan_op = _define_scan("selective_scan", lambda u, B: u.shape)
ss2d_scan_op = _define_scan("ss2d_scan", lambda x, B: (x.shape[0], x.shape[1], x.shape[2] * x.shape[3]))


# --------------------------------------------------------------------------------------------------
# Cross-scan and cross-merge: linear, each the other's adjoint
# --------------------------------------------------------------------------------------------------

@torch.library.custom_op(f"{NAMESPACE}::cross_scan", mutates_args=())
def cross_scan_op(x: Tensor, backend: str) -> Tensor:
    return kernels("cross_scan", backend).cross_scan(x).contiguous()


@torch.library.custom_op(f"{NAMESPACE}::cross_merge", mutates_args=())
def cross_merge_op(y: Tensor, backend: str) -> Tensor:
    return kernels("cross_scan", backend).cross_merge(y).contiguous()


@cross_scan_op.register_fake
def _(x, backend):
    batch, channels, height, width = x.shape
    return x.new_empty(batch, 4, channels, height * width)


@cross_merge_op.register_fake
def _(y, backend):
    batch, _, channels, height, width = y.shape
    return y.new_empty(batch, channels, height * width)


def _save_shape(ctx, inputs, output):
    ctx.shape, ctx.backend = inputs[0].shape, inputs[1]


def _cross_scan_grad(ctx, dy):
    batch, channels, height, width = ctx.shape
    return cross_merge_op(dy.reshape(batch, 4, channels, height, width), ctx.backend).view(ctx.shape), None


def _cross_merge_grad(ctx, dx):
    batch, _, channels, height, width = ctx.shape
    return cross_scan_op(dx.reshape(batch, channels, height, width), ctx.backend).view(ctx.shape), None


cross_scan_op.register_autograd(_cross_scan_grad, setup_context=_save_shape)
cross_merge_op.register_autograd(_cross_merge_grad, setup_context=_save_shape)


# --------------------------------------------------------------------------------------------------
# Neighborhood attention
# --------------------------------------------------------------------------------------------------

@torch.library.custom_op(f"{NAMESPACE}::neighborhood_attention_2d", mutates_args=())
def neighborhood_attention_2d_op(q: Tensor, k: Tensor, v: Tensor, kernel_size: int, dilation: int,
                                 rpb: Optional[Tensor], scale: float, backend: str) -> tuple[Tensor, Tensor]:
    """``(out (B, n, H, W, hd), lse (B, n, H, W))``: lse is the softmax's log-sum-exp per query."""
    return tuple(dense(*kernels("neighborhood_attention_2d", backend).forward(q, k, v, kernel_size, dilation, rpb,
                                                                               scale)))


@neighborhood_attention_2d_op.register_fake
def _(q, k, v, kernel_size, dilation, rpb, scale, backend):
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(q.shape[:4], dtype=lse_dtype)


@torch.library.custom_op(f"{NAMESPACE}::neighborhood_attention_2d_backward", mutates_args=())
def neighborhood_attention_2d_backward_op(q: Tensor, k: Tensor, v: Tensor, kernel_size: int, dilation: int,
                                          rpb: Optional[Tensor], scale: float, backend: str, out: Tensor,
                                          lse: Tensor, dout: Tensor, rpb_grad: bool) -> list[Tensor]:
    """``[dq, dk, dv]``, then ``d_rpb`` when ``rpb_grad``."""
    return dense(*kernels("neighborhood_attention_2d", backend).backward(
        q, k, v, kernel_size, dilation, rpb, scale, out, lse, dout, rpb_grad))


@neighborhood_attention_2d_backward_op.register_fake
def _(q, k, v, kernel_size, dilation, rpb, scale, backend, out, lse, dout, rpb_grad):
    return [torch.empty_like(t, memory_format=torch.contiguous_format)
            for t in _present(q, k, v, rpb if rpb_grad else None)]


def _na_setup_context(ctx, inputs, output):
    q, k, v, kernel_size, dilation, rpb, scale, backend = inputs
    ctx.save_for_backward(q, k, v, rpb, *output)
    ctx.args = (kernel_size, dilation)
    ctx.scale, ctx.backend = scale, backend


def _na_grad(ctx, dout, _dlse):
    q, k, v, rpb, out, lse = ctx.saved_tensors
    rpb_grad = rpb is not None and ctx.needs_input_grad[5]
    grads = neighborhood_attention_2d_backward_op(q, k, v, *ctx.args, rpb, ctx.scale, ctx.backend, out, lse,
                                                  dout, rpb_grad)
    return grads[0], grads[1], grads[2], None, None, grads[3] if rpb_grad else None, None, None


neighborhood_attention_2d_op.register_autograd(_na_grad, setup_context=_na_setup_context)
