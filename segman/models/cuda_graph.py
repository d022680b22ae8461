"""Training forward and backward of a module replayed from CUDA graphs.

SegMAN training is bound by the host, not the GPU: a SegMAN-S step launches about 6,000 kernels,
and at the paper's 4 crops per GPU the Python and launch work of an eager step takes about three
times as long as its GPU work (``benchmarks/RESULTS.md``, sixth session).  Replaying the encoder's
forward and backward from CUDA graphs removes that work.  :class:`TrainingGraph` wraps
``torch.cuda.make_graphed_callables``: it captures on the first call that qualifies and replays
afterwards; everything else (eval mode, CPU, no grad, another input shape) runs eagerly.

Rules that come with graphs (checked where they can be):

* one forward per backward: a replay overwrites the outputs and saved activations of the previous
  one, so backpropagating through a replay after a later one has run would give wrong gradients;
  :class:`_ReplayGuard` turns that into an error;
* the graphed outputs live in static memory that the next training step overwrites;
* parameters are read in place: optimizers that update them in place (all of torch's) are fine,
  replacing a parameter tensor after the capture is not;
* the graphed backward writes the parameters' gradients into static buffers, which autograd would
  adopt as ``.grad`` (the next replay would then overwrite accumulated gradients); a hook on each
  parameter hands autograd a copy instead, so gradient accumulation and ``zero_grad(set_to_none=
  False)`` stay correct;
* single-process training only (:func:`check_single_process`);
* the capture runs three warm-up steps first (Triton autotuning and cuDNN benchmarking happen
  there, outside the graph; the buffers they change, BatchNorm statistics, are restored) and keeps
  the activations' memory for the life of the graph.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, NamedTuple, Optional

import torch
from torch import nn


class _Forward(nn.Module):
    """The eager forward as a module whose parameters are the owner's (what graphing needs)."""

    def __init__(self, owner: nn.Module, forward: Callable[[torch.Tensor], Any]) -> None:
        super().__init__()
        self.owner = owner
        self.run = forward

    def forward(self, x: torch.Tensor) -> Any:
        return self.run(x)


class TrainingGraph:
    """Runs ``forward(x)`` of ``owner`` eagerly or from CUDA graphs.

    Graphs are used when ``owner`` is in training mode, grad is enabled, ``x`` is a CUDA tensor
    that does not require grad, and no other capture is under way.  The first such call captures
    (input shape, dtype, device and autocast state become the graph's key); later calls with the
    same key replay, calls with another key run eagerly (warned once per key).

    Args:
        owner: the module whose parameters the forward uses.
        forward: the eager forward, ``(B, C, H, W)`` tensor → tensor or list/tuple of tensors.
    """

    def __init__(self, owner: nn.Module, forward: Callable[[torch.Tensor], Any]) -> None:
        self._owner = owner
        self._forward = forward
        self._graphed: Optional[Callable[[torch.Tensor], Any]] = None
        self._key: Optional[GraphKey] = None
        self._warned: set = set()
        self._guard = _ReplayGuard()

    @property
    def captured(self) -> bool:
        return self._graphed is not None

    def __getstate__(self) -> dict:  # copies (EMA models, pickling) start uncaptured
        return {"owner": self._owner, "forward": self._forward}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["owner"], state["forward"])

    def __call__(self, x: torch.Tensor) -> Any:
        if not self._applies(x):
            return self._forward(x)
        key = GraphKey.of(x)
        if self._graphed is None:
            self._capture(x, key)
        elif key != self._key:
            if key not in self._warned:
                self._warned.add(key)
                warnings.warn(f"CUDA graph captured for input {self._key}; this call has "
                              f"{key} and runs eagerly (slower). Keep training crops one size "
                              f"(mmseg pads them to crop_size) or turn cuda_graph off.", stacklevel=3)
            return self._forward(x)
        return self._guard.track(self._graphed(x))

    def _applies(self, x: torch.Tensor) -> bool:
        return (self._owner.training and torch.is_grad_enabled() and x.is_cuda and not x.requires_grad
                and not torch.cuda.is_current_stream_capturing())

    def _capture(self, x: torch.Tensor, key: "GraphKey") -> None:
        check_single_process()
        runner = _Forward(self._owner, self._forward)
        buffers = [(b, b.clone()) for b in self._owner.buffers()]
        # make_graphed_callables refuses autocast's weight-cast cache (a replay cannot refill it)
        with torch.autocast("cuda", dtype=key.autocast_dtype, enabled=key.autocast, cache_enabled=False):
            self._graphed = torch.cuda.make_graphed_callables(runner, (x.detach().clone(),),
                                                              allow_unused_input=True)
        with torch.no_grad():
            for buffer, before in buffers:  # undo the warm-up steps' updates
                buffer.copy_(before)
        self._key = key
        for param in self._owner.parameters():
            if param.requires_grad:
                param.register_hook(_fresh_copy)


class _ReplayGuard:
    """Counts replays and refuses the backward of one whose outputs a later replay overwrote."""

    def __init__(self) -> None:
        self.replays = 0

    def track(self, outputs: Any) -> Any:
        """Registers ``outputs`` (a tensor or a list/tuple of them) as the newest replay's."""
        self.replays += 1
        replay = self.replays
        tensors = [t for t in torch.utils._pytree.tree_leaves(outputs) if t.requires_grad]

        def check(_grad: torch.Tensor) -> None:
            if self.replays != replay:
                raise RuntimeError(f"backward through the outputs of CUDA-graph replay {replay} after replay "
                                   f"{self.replays} overwrote them: with cuda_graph, run each training forward's "
                                   f"backward before the next training forward")

        if tensors:
            torch.autograd.graph.register_multi_grad_hook(tensors, check, mode="any")
        return outputs


def check_single_process() -> None:
    """Raise unless this is a single-process run: with DistributedDataParallel (torch 2.11, two H200s)
    a capture inside DDP's forward fails, and one taken before wrapping replays with gradients that
    differ from eager DDP's by O(1), so graphed multi-GPU training is refused rather than wrong."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        raise RuntimeError("cuda_graph works for single-GPU training only (under DistributedDataParallel the "
                           "graphed backward does not synchronise gradients); drop --cuda-graph / cuda_graph=True "
                           "for distributed runs")


def _fresh_copy(grad: torch.Tensor) -> torch.Tensor:
    """A gradient autograd may keep as ``.grad`` without aliasing the graph's static buffer."""
    return grad.clone()


class GraphKey(NamedTuple):
    """What a captured graph is valid for: the input's shape, dtype and device, and the autocast state."""

    shape: tuple
    dtype: torch.dtype
    device: torch.device
    autocast: bool
    autocast_dtype: torch.dtype

    @classmethod
    def of(cls, x: torch.Tensor) -> "GraphKey":
        return cls(tuple(x.shape), x.dtype, x.device, torch.is_autocast_enabled("cuda"),
                   torch.get_autocast_dtype("cuda"))

    def __str__(self) -> str:
        amp = f"autocast {str(self.autocast_dtype).replace('torch.', '')}" if self.autocast else "no autocast"
        return f"shape {list(self.shape)}, {str(self.dtype).replace('torch.', '')} on {self.device}, {amp}"
