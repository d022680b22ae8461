"""CUDA selective scan for ``segman.ops`` (docs/model.md §4.3); see kernels/selective_scan/README.md.

``fwd(u, delta, A, B, C, D, delta_bias, softplus) -> (out, states)`` and
``bwd(u, delta, A, B, C, D, delta_bias, dout, states, softplus) -> [du, ddelta, dA, dB, dC, dD, ddelta_bias]``.
``segman.ops.selective_scan(..., backend="cuda")`` wraps them in an autograd Function.
"""
import torch  # noqa: F401  (loads libc10 / libtorch, which _C links against)

from ._C import CHUNK, MAX_D_STATE, bwd, fwd, get_kernel_modes, set_kernel_modes  # noqa: F401

__all__ = ["fwd", "bwd", "set_kernel_modes", "get_kernel_modes", "CHUNK", "MAX_D_STATE"]
