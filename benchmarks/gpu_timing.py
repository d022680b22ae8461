"""Timing helpers shared by the GPU benchmarks (``na_gpu.py``, ``scan_gpu.py``, ``model_gpu.py``,
``e2e_gpu.py``).

``step_time`` times whole training or inference steps, back to back as a training loop runs them.

``bench`` times an eager call; ``graph_bench`` replays the call from a CUDA graph, which leaves
out the host work (Python, argument handling, launches) and measures what the GPU spends; at
small shapes the two differ several-fold.  ``graph_bench`` gives two numbers: the span of the
replay's kernels on the GPU (CUPTI timestamps, the GPU time the benchmarks judge), and the time
between CUDA events around the replay, which adds the graph launch's latency (about 4 µs on an
H100: a one-element kernel spans 1.3 µs and measures 5.0 between events).  ``copy_bandwidth`` is
the reference for the floors; ``same_size_copy`` times a copy of a floor's own bytes the way the
kernels are timed.  Every timing flushes L2 before each call by writing 256 MB, as
``triton.testing.do_bench`` does.
"""
from __future__ import annotations

import functools
import statistics
import time
from typing import Callable, NamedTuple, Optional

import torch
import triton
import triton.language as tl
from torch.profiler import ProfilerActivity, profile
from triton.testing import do_bench

FLUSH_BYTES = 256 * 2 ** 20


def step_time(step: Callable[[], object], steps: int, repeats: int, warmup: int) -> tuple[float, float]:
    """(median ms per step over ``repeats`` timings of ``steps`` consecutive steps, CUDA events; seconds
    of the first step, which compiles and autotunes), after ``warmup`` more untimed steps."""
    first = time.perf_counter()
    step()
    torch.cuda.synchronize()
    first = time.perf_counter() - first
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / steps)
    return statistics.median(times), first


def bench(fn: Callable[[], object]) -> float:
    """Median milliseconds of eager calls (CUDA events; L2 flushed before each call)."""
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


@triton.jit
def _flush_l2(X, N, BLOCK: tl.constexpr):
    """Zeros over ``X[:N]``, grid-strided: ``kernel_span``'s L2 flush, told apart by its name."""
    offsets = tl.arange(0, BLOCK)
    for start in range(tl.program_id(0) * BLOCK, N, tl.num_programs(0) * BLOCK):
        tl.store(X + start + offsets, tl.zeros([BLOCK], tl.float32), mask=start + offsets < N)


@functools.lru_cache(maxsize=None)
def _flush_buffer(device: int) -> torch.Tensor:
    return torch.empty(FLUSH_BYTES // 4, dtype=torch.float32, device=f"cuda:{device}")


def kernel_span(fn: Callable[[], object], calls: int = 50) -> float:
    """Median milliseconds from the first kernel (or memcpy) that a call of ``fn`` runs on the GPU
    to the end of its last one, from CUPTI's timestamps (``torch.profiler``), L2 flushed before
    each call.  Gaps between the call's kernels count; the launch latency before the first does not."""
    buf = _flush_buffer(torch.cuda.current_device())

    def flushed_call():
        _flush_l2[(1024,)](buf, buf.numel(), BLOCK=1024)
        fn()

    for _ in range(3):
        flushed_call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            flushed_call()
        torch.cuda.synchronize()
    events = sorted((e for e in prof.profiler.kineto_results.events()
                     if e.device_type() == torch.autograd.DeviceType.CUDA), key=lambda e: e.start_ns())
    spans, first, last = [], None, 0
    for event in events + [None]:                 # a flush (or the end) closes the call before it
        if event is None or event.name() == _flush_l2.__name__:
            if first is not None:
                spans.append(last - first)
            first, last = None, 0
            continue
        first = event.start_ns() if first is None else first
        last = max(last, event.end_ns())
    if len(spans) != calls:
        raise RuntimeError(f"kernel_span: found the GPU work of {len(spans)} calls, expected {calls}")
    return statistics.median(spans) / 1e6


class GraphTime(NamedTuple):
    """Milliseconds of a call replayed from a CUDA graph (medians, L2 flushed before each replay)."""
    kernels: float  # from its first kernel's start to its last one's end on the GPU: the GPU time
    replay: float   # between CUDA events around the replay: adds the graph launch's latency


def graph_bench(fn: Callable[[], object], stream: Optional[torch.cuda.Stream] = None) -> GraphTime:
    """``fn`` replayed from a CUDA graph captured on ``stream``.  ``fn`` runs three times first,
    outside the capture, so that autotuning, compilation and the allocator settle.  A backward
    alone (``torch.autograd.grad``) runs on the streams of its forward: pass the stream the forward
    ran on."""
    stream = torch.cuda.Stream() if stream is None else stream
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        fn()
    times = GraphTime(kernel_span(graph.replay), bench(graph.replay))
    del graph
    torch.cuda.empty_cache()
    return times


def copy_bandwidth() -> float:
    """Bytes read + written per millisecond by a 1 GiB device-to-device copy (its span on the GPU)."""
    src = torch.empty(2 ** 28, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    ms = kernel_span(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / ms


def same_size_copy(nbytes: int) -> GraphTime:
    """A device-to-device copy moving ``nbytes`` (half read, half written), replayed like the
    kernels (``graph_bench``): what a floor's own bytes take at this size, where ramp-up and tail
    are not spread over 1 GiB."""
    src = torch.empty(nbytes // 8, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    return graph_bench(functools.partial(dst.copy_, src))
