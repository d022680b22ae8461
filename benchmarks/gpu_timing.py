"""Timing helpers shared by the GPU benchmarks (``na_gpu.py``, ``scan_gpu.py``).

``bench`` times an eager call; ``graph_bench`` replays the call from a CUDA graph, which leaves
out the host work (Python, argument handling, launches) and measures what the GPU spends; at
small shapes the two differ several-fold.  ``copy_bandwidth`` is the reference for the floors;
``same_size_copy`` times a copy of a floor's own bytes the way the kernels are timed.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
from triton.testing import do_bench


def bench(fn: Callable[[], object]) -> float:
    """Median milliseconds of eager calls (CUDA events; L2 flushed before each call)."""
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def graph_bench(fn: Callable[[], object], stream: Optional[torch.cuda.Stream] = None) -> float:
    """Median milliseconds of ``fn`` replayed from a CUDA graph captured on ``stream`` (L2 flushed
    before each replay).  ``fn`` runs three times first, outside the capture, so that autotuning,
    compilation and the allocator settle.  A backward alone (``torch.autograd.grad``) runs on the
    streams of its forward: pass the stream the forward ran on."""
    stream = torch.cuda.Stream() if stream is None else stream
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        fn()
    ms = bench(graph.replay)
    del graph
    torch.cuda.empty_cache()
    return ms


def copy_bandwidth() -> float:
    """Bytes read + written per millisecond by a 1 GiB device-to-device copy."""
    src = torch.empty(2 ** 28, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / ms


def same_size_copy(nbytes: int) -> float:
    """Milliseconds of a device-to-device copy moving ``nbytes`` (half read, half written), replayed
    like the kernels (``graph_bench``): what a floor's own bytes take at this size, where launch,
    ramp-up and tail are not spread over 1 GiB."""
    src = torch.empty(nbytes // 8, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    return graph_bench(functools.partial(dst.copy_, src))
