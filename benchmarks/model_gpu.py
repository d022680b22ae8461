"""GPU training-step time of the SegMAN segmentors with each ops backend (what the kernels buy).

One step = forward of ``segman.models.SegMAN`` (backbone + MMSC decoder) on a batch of 512×512
crops, cross-entropy on the 1/8-resolution logits, backward (no optimizer: the same for every
backend).  Each configuration runs under ``segman.ops.force_backend``:

* ``auto``: ``backend=None`` everywhere (the fastest registered backend per op: triton NA,
  cuda or triton scan, triton cross-scan);
* ``NA torch``: neighborhood attention on the torch reference, the rest automatic;
* ``all torch``: every op on its torch reference (what runs without our GPU kernels);
* ``auto, CUDA graph`` (with ``--cuda-graph``): ``auto`` with the encoder's ``cuda_graph`` option,
  its forward and backward replayed from CUDA graphs (the decoder and loss stay eager).

Printed per (variant, precision, backend): median step ms over ``--steps`` timed steps after
``--warmup`` steps, images/s, and peak allocated GPU memory.  ``bf16`` runs the step under
``torch.autocast(dtype=torch.bfloat16)``; ``fp32`` is plain fp32 (TF32 off).

Under ``torchrun --nproc-per-node N`` the model is trained data-parallel as ``tools/train.py``
does it: BatchNorm becomes SyncBatchNorm, DistributedDataParallel wraps the model, and with
``cuda_graph`` the encoder's graphs average its gradients (``leave_to_graphs``); ``--batch`` is per
GPU and rank 0 prints.

The table is printed and written to ``benchmarks/results/model_gpu.md`` (``model_gpu_<N>gpus.md``
under torchrun; overwritten, ``--no-write`` prints only).

``--profile`` instead prints where the time of an ``auto`` step goes: the step's wall time against
the host's (when ``train_step`` returns) and the GPU's busy time and kernel count (a step whose host
time is close to its wall time is bound by the host), then the kernels with the most self CUDA time
(torch.profiler).

Usage: python benchmarks/model_gpu.py [--variants s] [--batch 16] [--precisions bf16 fp32]
       [--backends auto "NA torch" "all torch"] [--cuda-graph] [--profile] [--cudnn-benchmark]
       torchrun --nproc-per-node 2 benchmarks/model_gpu.py [...]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from gpu_timing import step_time
from report import environment, write_results
from segman.models import SegMAN
from segman.models.cuda_graph import leave_to_graphs, release_graphs
from segman.ops import force_backend

BACKENDS = {"auto": None, "NA torch": "neighborhood_attention_2d=torch", "all torch": "torch"}
PRECISIONS = {"bf16": torch.bfloat16, "fp32": None}


def train_step(model: torch.nn.Module, img: torch.Tensor, target: torch.Tensor, dtype) -> None:
    """Forward, cross-entropy on the 1/8 logits, backward."""
    with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
        loss = F.cross_entropy(model(img).float(), target)
    loss.backward()
    model.zero_grad(set_to_none=True)


def step_ms(model: torch.nn.Module, img: torch.Tensor, target: torch.Tensor, dtype, warmup: int,
            steps: int) -> float:
    """Median milliseconds of ``train_step``, each step timed alone."""
    return step_time(lambda: train_step(model, img, target, dtype), 1, steps, max(warmup - 1, 0))[0]


def build(variant: str, graphed: bool) -> torch.nn.Module:
    """A SegMAN segmentor in training mode on this process's GPU; data-parallel under torchrun."""
    model = SegMAN(variant, num_classes=150, cuda_graph=graphed).cuda().train()
    if not torch.distributed.is_initialized():
        return model
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    leave_to_graphs(model)
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[torch.cuda.current_device()])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["s"], choices=["t", "s", "b", "l"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--cuda-graph", action="store_true",
                        help="also time auto with the encoder's cuda_graph (with --profile: profile that instead)")
    parser.add_argument("--profile", action="store_true", help="kernel breakdown of one auto step instead")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="torch.backends.cudnn.benchmark = True (what the segmentation configs set)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave the results file alone")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("model_gpu.py needs a CUDA device")
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        if args.profile:
            sys.exit("--profile runs on one GPU; start it without torchrun")
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        torch.distributed.init_process_group("nccl")
    rank0 = int(os.environ.get("RANK", 0)) == 0
    lines = []

    def report(line: str, flush: bool = False) -> None:
        """Print on rank 0 and keep the line for the results file."""
        if rank0:
            lines.append(line)
            print(line, flush=flush)

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    torch.manual_seed(0)
    img = torch.randn(args.batch, 3, args.size, args.size, device="cuda")
    target = torch.randint(0, 150, (args.batch, args.size // 8, args.size // 8), device="cuda")
    if args.profile:
        profile(args, img, target)
        return
    gpus = f"{world} GPUs (DDP, SyncBN), {args.batch} per GPU" if world > 1 else f"batch {args.batch}"
    report(f"# SegMAN training step (`benchmarks/model_gpu.py`)\n\n{environment()}; {gpus} × {args.size}², "
           f"forward + loss + backward, median of {args.steps} steps, cudnn.benchmark {args.cudnn_benchmark}\n")
    report("| model | precision | backends | step ms | images/s | peak GiB |")
    report("|---|---|---|---:|---:|---:|")
    runs = [(bname, False) for bname in args.backends] + ([("auto", True)] if args.cuda_graph else [])
    for variant in args.variants:
        for pname in args.precisions:
            for bname, graphed in runs:
                label = f"{bname}, CUDA graph" if graphed else bname
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                # a fresh model per row: a captured graph belongs to one precision
                model = build(variant, graphed)
                try:
                    with force_backend(BACKENDS[bname]):
                        ms = step_ms(model, img, target, PRECISIONS[pname], args.warmup, args.steps)
                except torch.OutOfMemoryError:
                    report(f"| SegMAN-{variant.upper()} | {pname} | {label} | out of memory | | |", flush=True)
                    continue
                finally:
                    release_graphs(model)  # before the process group goes: graphs may hold NCCL calls
                    del model
                peak = torch.cuda.max_memory_allocated() / 2 ** 30
                images_per_s = world * args.batch / ms * 1e3
                report(f"| SegMAN-{variant.upper()} | {pname} | {label} | {ms:.1f} | {images_per_s:.1f} | {peak:.2f} |",
                       flush=True)
    if rank0 and not args.no_write:
        write_results("model_gpu" if world == 1 else f"model_gpu_{world}gpus", "\n".join(lines))
    if world > 1:
        torch.distributed.destroy_process_group()


def host_ms(model: torch.nn.Module, img: torch.Tensor, target: torch.Tensor, dtype, steps: int) -> tuple[float, float]:
    """Median wall milliseconds of a step started on an idle GPU, and median milliseconds until
    ``train_step`` returns on the host."""
    walls, hosts = [], []
    for _ in range(steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        train_step(model, img, target, dtype)
        returned = time.perf_counter()
        torch.cuda.synchronize()
        walls.append((time.perf_counter() - start) * 1e3)
        hosts.append((returned - start) * 1e3)
    return statistics.median(walls), statistics.median(hosts)


def gpu_busy_ms(prof) -> tuple[float, int]:
    """GPU milliseconds during which some kernel of a profiled step ran, and the number of kernels."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                   if e.device_type == torch.autograd.DeviceType.CUDA and e.device_time > 0)
    busy, lo, hi = 0.0, None, None
    for start, end in spans:
        if hi is None or start > hi:
            busy += 0.0 if hi is None else hi - lo
            lo, hi = start, end
        else:
            hi = max(hi, end)
    return (busy + (hi - lo if hi is not None else 0.0)) / 1e3, len(spans)


def profile(args, img: torch.Tensor, target: torch.Tensor) -> None:
    """Host against GPU time, then the top kernels by self CUDA time, of the automatic-backend step
    per variant and precision."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    for variant in args.variants:
        model = SegMAN(variant, num_classes=150, cuda_graph=args.cuda_graph).cuda().train()
        for pname in args.precisions:
            for _ in range(args.warmup):
                train_step(model, img, target, PRECISIONS[pname])
            wall, host = host_ms(model, img, target, PRECISIONS[pname], args.steps)
            with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
                train_step(model, img, target, PRECISIONS[pname])
                torch.cuda.synchronize()
            busy, kernels = gpu_busy_ms(prof)
            graph = ", encoder in CUDA graphs" if args.cuda_graph else ""
            print(f"# SegMAN-{variant.upper()} {pname}{graph}, batch {args.batch} × {args.size}²: step {wall:.1f} ms, "
                  f"train_step returns after {host:.1f} ms (host), GPU busy {busy:.1f} ms in {kernels} kernels")
            print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=60))


if __name__ == "__main__":
    main()
