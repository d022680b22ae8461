"""Training forward and backward of a module replayed from CUDA graphs.

SegMAN training is bound by the host, not the GPU: a SegMAN-S step launches about 6,000 kernels,
and at the paper's 4 crops per GPU the Python and launch work of an eager step outlasts its GPU work
(``docs/performance.md``).  Replaying the encoder's forward and backward from CUDA graphs removes
that work.  :class:`TrainingGraph` captures on the
first call that qualifies and replays afterwards; everything else (eval mode, CPU, no grad, another
input shape) runs eagerly.

Rules that come with graphs (checked where they can be):

* one forward per backward: a replay overwrites the outputs and saved activations of the previous
  one, so the backward of a replay after a later one has run is refused with an error;
* the graphed outputs live in static memory that the next training step overwrites;
* parameters are read in place: optimizers that update them in place (all of torch's) are fine,
  replacing a parameter tensor after the capture is not;
* the graphed backward writes the parameters' gradients into static buffers; autograd gets them
  copied into one new buffer per backward (so ``.grad`` never aliases what the next replay
  overwrites, and gradient accumulation and in-place ``zero_grad`` stay correct);
* distributed runs: the graphs average the gradients over the ranks themselves (one all-reduce of
  that buffer per backward), so DistributedDataParallel must leave these parameters alone
  (:func:`leave_to_graphs`, called by the trainers before wrapping); SyncBatchNorm layers inside
  the graphs keep their collectives;
* the capture runs three warm-up steps first (Triton autotuning and cuDNN benchmarking happen
  there, outside the graph; the buffers they change, BatchNorm statistics, are restored) and keeps
  the activations' memory for the life of the graph.

Why not ``torch.cuda.make_graphed_callables``: it captures in the global capture mode, where another
thread's CUDA event query (NCCL's watchdog in distributed runs) invalidates the capture, and its graphed
parameters still go through DDP's reducer.  Here the forward and the backward are captured with
``torch.cuda.graph`` in ``thread_local`` mode (one memory pool, one side stream) and replayed by one
autograd node, whose backward hands out the gradients as views of one new buffer.

:func:`leave_to_graphs` relies on a private DistributedDataParallel method,
``_set_params_and_buffers_to_ignore_for_model``, to keep DDP's reducer away from the graphed
parameters; a torch release that renames it breaks distributed graph training (a single GPU is
unaffected).
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, NamedTuple, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

WARMUP_STEPS = 3


class TrainingGraph:
    """Runs ``forward(x)`` of ``owner`` eagerly or from CUDA graphs.

    Graphs are used when ``owner`` is in training mode, grad is enabled, ``x`` is a CUDA tensor
    that does not require grad, and no other capture is under way.  The first such call captures
    (input shape, dtype, device and autocast state become the graph's key); later calls with the
    same key replay, calls with another key run eagerly (warned once per key).

    Args:
        owner: the module whose parameters the forward uses.
        forward: the eager forward, ``(B, C, H, W)`` tensor → tensor or list/tuple of tensors.

    ``averages_gradients`` (set by :func:`leave_to_graphs`): the replays all-reduce the gradients
    over the ranks; a training step that cannot replay is then an error, since its gradients would
    not be averaged.
    """

    def __init__(self, owner: nn.Module, forward: Callable[[torch.Tensor], Any]) -> None:
        self._owner = owner
        self._forward = forward
        self._step: Optional[_CapturedStep] = None
        self._warned: set = set()
        self.averages_gradients = False

    @property
    def captured(self) -> bool:
        return self._step is not None

    def __getstate__(self) -> dict:  # copies (EMA models, pickling) start uncaptured
        return {"owner": self._owner, "forward": self._forward}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["owner"], state["forward"])

    def release(self) -> None:
        """Frees the captured graphs and their memory; the next training call captures again."""
        if self._step is not None:
            self._step.forward_graph.reset()
            self._step.backward_graph.reset()
            self._step = None

    def __call__(self, x: torch.Tensor) -> Any:
        if not self._owner.training or not torch.is_grad_enabled():
            return self._forward(x)  # no gradients to compute
        if not x.is_cuda or x.requires_grad:
            self._train_eagerly("its input is on the CPU" if not x.is_cuda else "its input requires grad")
            return self._forward(x)
        if torch.cuda.is_current_stream_capturing():
            return self._forward(x)  # part of a larger capture
        key = GraphKey.of(x)
        if self._step is None:
            self._step = self._capture(x, key)
        if key == self._step.key:
            return self._step(x, self.averages_gradients)
        self._train_eagerly(f"the CUDA graph was captured for input {self._step.key} and this call has {key}", key)
        return self._forward(x)

    def _capture(self, x: torch.Tensor, key: GraphKey) -> "_CapturedStep":
        if _world_size() > 1 and not self.averages_gradients:
            raise RuntimeError("cuda_graph in a distributed run: call segman.models.cuda_graph."
                               "leave_to_graphs(model) before wrapping the model in DistributedDataParallel "
                               "(tools/train.py and classification/train.py do)")
        try:
            return _CapturedStep.capture(self._owner, self._forward, x, key)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as e:  # e.g. an op that cannot be captured: say whose capture it was
            raise RuntimeError(f"cuda_graph: capturing the training step of {type(self._owner).__name__} "
                               f"failed ({e}). Train without cuda_graph (drop --cuda-graph).") from e

    def _train_eagerly(self, reason: str, key: Optional[GraphKey] = None) -> None:
        """Refuses an eager training step whose gradients no one would average; else warns once per key."""
        if self.averages_gradients:
            raise RuntimeError(f"cuda_graph: a training step cannot replay ({reason}), and run eagerly its "
                               f"gradients would not be averaged over the ranks. Keep training crops one size "
                               f"(mmseg pads them to crop_size) or turn cuda_graph off.")
        if key is not None and key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"{reason}, so it runs eagerly (slower). Keep training crops one size "
                          f"(mmseg pads them to crop_size) or turn cuda_graph off.", stacklevel=4)


class _CapturedStep:
    """A captured forward and backward: static input, outputs and gradient buffers, two graphs.

    ``forward_graph`` and ``backward_graph`` need only ``replay()`` and ``reset()`` (the CPU tests stand
    in for them); ``params`` are the trainable parameters, ``grads`` their static gradients (None
    for parameters the forward does not use).
    """

    def __init__(self, key: GraphKey, forward_graph: Any, backward_graph: Any, x: torch.Tensor,
                 outputs: Any, grad_outputs: list[torch.Tensor], params: list[nn.Parameter],
                 grads: list[Optional[torch.Tensor]]) -> None:
        self.key = key
        self.forward_graph, self.backward_graph = forward_graph, backward_graph
        self.x = x
        # detached: kept with their captured autograd graph, the outputs would keep the parameters'
        # AccumulateGrad nodes alive on the capture stream, and every replayed backward would sync to it
        flat, self.output_spec = tree_flatten(outputs)
        self.outputs = [o.detach() for o in flat]
        self.grad_outputs = grad_outputs
        self.params, self.grads = params, grads
        self.replays = 0

    @classmethod
    def capture(cls, owner: nn.Module, forward: Callable[[torch.Tensor], Any], x: torch.Tensor,
                key: GraphKey) -> "_CapturedStep":
        """Warms up, then captures ``forward(x)`` and its backward into the parameters."""
        params = [p for p in owner.parameters() if p.requires_grad]
        buffers = [(b, b.clone()) for b in owner.buffers()]
        static_x = x.detach().clone()
        stream = torch.cuda.Stream(device=x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))

        def backward(outputs: list[torch.Tensor], grad_outputs: list[torch.Tensor]) -> tuple:
            return torch.autograd.grad(outputs, params, grad_outputs, allow_unused=True)

        # "thread_local": event queries by other threads (NCCL's watchdog) do not break the capture;
        # the autocast weight-cast cache is off (a replay cannot refill it)
        with torch.cuda.stream(stream), torch.autocast("cuda", dtype=key.autocast_dtype, enabled=key.autocast,
                                                       cache_enabled=False):
            for _ in range(WARMUP_STEPS):  # autotuning, cuDNN benchmarks and lazy initialisation happen here
                outputs = _flat_outputs(forward(static_x))
                backward(outputs, [torch.ones_like(o) for o in outputs])
            del outputs
            pool = torch.cuda.graph_pool_handle()
            forward_graph, backward_graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
            with torch.cuda.graph(forward_graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
                static_outputs = forward(static_x)
            outputs = _flat_outputs(static_outputs)
            grad_outputs = [torch.empty_like(o) for o in outputs]
            with torch.cuda.graph(backward_graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
                grads = backward(outputs, grad_outputs)
        torch.cuda.current_stream(x.device).wait_stream(stream)
        with torch.no_grad():
            for buffer, before in buffers:  # undo the warm-up steps' updates
                buffer.copy_(before)
        return cls(key, forward_graph, backward_graph, static_x, static_outputs, grad_outputs, params, list(grads))

    def __call__(self, x: torch.Tensor, average: bool) -> Any:
        """Replays the forward; the returned tensors' backward replays the backward and, with
        ``average``, averages the gradients over the ranks."""
        outputs = _Replay.apply(self, average, x, *self.params)
        return tree_unflatten(list(outputs), self.output_spec)

    def gradients(self, average: bool) -> list[Optional[torch.Tensor]]:
        """The static gradients copied into one new buffer (autograd keeps them as ``.grad``, which must
        not alias what the next replay overwrites), with ``average`` averaged over the ranks."""
        present = [g for g in self.grads if g is not None]
        flat = torch.cat([g.reshape(-1) for g in present])
        if average:
            flat.div_(_world_size())
            dist.all_reduce(flat)
        copies = iter(flat.split([g.numel() for g in present]))
        return [None if g is None else next(copies).view_as(g) for g in self.grads]


class _Replay(torch.autograd.Function):
    """One autograd node for a replayed step: ``(step, average, x, *params)`` → the flat outputs."""

    @staticmethod
    def forward(ctx: Any, step: _CapturedStep, average: bool, x: torch.Tensor, *params: torch.Tensor) -> tuple:
        step.x.copy_(x)
        step.forward_graph.replay()
        step.replays += 1
        ctx.step, ctx.average, ctx.replay = step, average, step.replays
        return tuple(o.detach() for o in step.outputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, *grad_outputs: torch.Tensor) -> tuple:
        step = ctx.step
        if step.replays != ctx.replay:
            raise RuntimeError(f"backward through the outputs of CUDA-graph replay {ctx.replay} after replay "
                               f"{step.replays} overwrote them: with cuda_graph, run each training forward's "
                               f"backward before the next training forward")
        for static, grad in zip(step.grad_outputs, grad_outputs):
            static.copy_(grad)
        step.backward_graph.replay()
        return (None, None, None, *step.gradients(ctx.average))


def _flat_outputs(outputs: Any) -> list[torch.Tensor]:
    """The forward's output tensors in pytree order; each must depend on the parameters."""
    flat = tree_flatten(outputs)[0]
    if not all(isinstance(o, torch.Tensor) and o.requires_grad for o in flat):
        raise RuntimeError("cuda_graph needs a forward whose outputs are tensors that all depend on the parameters")
    return flat


def _graphed_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``model``'s modules that have a :class:`TrainingGraph`, with their names."""
    return [(name, m) for name, m in model.named_modules() if getattr(m, "training_graph", None) is not None]


def graphed_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The trainable parameters of ``model``'s modules that have a :class:`TrainingGraph`, by name."""
    return {f"{prefix}.{name}" if prefix else name: p for prefix, module in _graphed_modules(model)
            for name, p in module.named_parameters() if p.requires_grad}


def leave_to_graphs(model: nn.Module) -> dict[str, nn.Parameter]:
    """Prepares ``model`` for DistributedDataParallel when parts of it are graphed; call before wrapping.

    In a distributed run with CUDA, the graphs average their parameters' gradients themselves
    (one all-reduce per backward), so DDP is told to skip those parameters; as DDP's constructor
    would have done, they and the graphed modules' buffers are broadcast from rank 0 here.  Returns
    the parameters left to the graphs: when they are all of the model's trainable ones, DDP has
    nothing left to do and the model needs no wrapping.  Elsewhere this changes nothing.
    """
    if _world_size() == 1 or not torch.cuda.is_available():
        return {}
    graphs = [m for _, m in _graphed_modules(model)]
    graphed = graphed_parameters(model)
    if graphed:
        if not all(p.is_cuda for p in graphed.values()):
            raise ValueError("leave_to_graphs broadcasts the graphed parameters over NCCL: move the model "
                             "to its GPU first")
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, list(graphed))
        for tensor in [p.data for p in graphed.values()] + [b for m in graphs for b in m.buffers()]:
            dist.broadcast(tensor, src=0)
    for module in graphs:
        module.training_graph.averages_gradients = True
    return graphed


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def release_graphs(model: nn.Module) -> None:
    """Frees the captured graphs of ``model``'s graphed modules.  Call it before
    ``torch.distributed.destroy_process_group()``: NCCL cannot tear down a communicator that live
    graphs (SyncBatchNorm's collectives) still use, and the call would hang (pytorch#115388)."""
    for _, module in _graphed_modules(model):
        module.training_graph.release()


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
