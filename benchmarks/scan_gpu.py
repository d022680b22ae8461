"""GPU timings of the selective scan and cross-scan / cross-merge against the memory-bandwidth floor.

Shapes: SegMAN-S training on 512×512 crops, batch 16, K = 4 scan directions, d_state 1:
stage 1 C = 64 at L = 128², stage 2 C = 144 at 64², stage 3 C = 288 at 32² (the scan sees
``(16, 4C, L)``).  For each shape and input dtype (fp32, bf16), every registered backend of
``segman.ops.selective_scan`` (torch reference included) is timed forward and backward, and the
SS2D step (cross-scan → scan → cross-merge) is timed composed from the public ops and, when
available, fused (``segman.ops.ss2d_scan``).

Floor = bytes that must move / copy bandwidth, both measured in this run.  Bytes: every input read
once and every output written once (forward: u, delta, B, C in, y fp32 out; backward: u, delta,
B, C, dy fp32 in, du, ddelta, dB, dC out; per-channel parameters are negligible).  Copy bandwidth:
a 1 GiB device-to-device copy, counting bytes read plus written.  Under each scan floor, a row
times a copy of the floor's bytes (a few hundred MB at most): the same copy at the kernels' size,
ramp-up and tail included, for reference; the ratios stay against the floor.  Every call runs with
L2 flushed before it, through the public functions (backward: ``torch.autograd.grad`` of the output),
timed in three ways (``gpu_timing``): the GPU time of the call replayed from a CUDA graph, from its
first kernel's start to its last one's end (CUPTI; compared with the floor, and the copy bandwidth
is measured the same way); the same replay between CUDA events (``replay`` columns: adds the graph
launch's latency, about 4 µs); and called eagerly (``eager`` columns: what a Python loop of such
calls measures, which at the small shapes is mostly host work).

Printed and written to ``benchmarks/results/scan_gpu.md`` (overwritten; ``--no-write`` prints only).

Usage: python benchmarks/scan_gpu.py [--sweep] [--kernel-modes] [--only cuda triton] [--skip-ss2d] [--no-write]
(--sweep: Triton launch configurations; --kernel-modes: each CUDA forward and backward kernel variant.)
"""
from __future__ import annotations

import argparse
import importlib

import torch

from gpu_timing import GraphTime, bench, copy_bandwidth, graph_bench, same_size_copy
from report import environment, write_results
from segman.ops import cross_merge, cross_scan, selective_scan

SCAN = importlib.import_module("segman.ops.selective_scan")
BATCH, GROUPS = 16, 4
STAGES = [(64, 128), (144, 64), (288, 32)]  # (C, H = W)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def scan_inputs(channels, side, dtype, seed=0):
    torch.manual_seed(seed)
    length = side * side
    ch = GROUPS * channels
    dev = "cuda"
    return dict(
        u=torch.randn(BATCH, ch, length, device=dev).to(dtype),
        delta=(0.5 * torch.randn(BATCH, ch, length, device=dev) - 1.0).to(dtype),
        A=-torch.exp(0.1 * torch.randn(ch, 1, device=dev)),
        B=torch.randn(BATCH, GROUPS, 1, length, device=dev).to(dtype),
        C=torch.randn(BATCH, GROUPS, 1, length, device=dev).to(dtype),
        D=torch.ones(ch, device=dev),
        delta_bias=torch.empty(ch, device=dev).uniform_(-6.0, -2.0),
    )


def scan_bytes(channels, side, dtype):
    length, ch = side * side, GROUPS * channels
    e = torch.finfo(dtype).bits // 8
    per_row, per_group = BATCH * ch * length, BATCH * GROUPS * length
    fwd = per_row * (2 * e + 4) + per_group * 2 * e
    bwd = per_row * (2 * e + 4 + 2 * e) + per_group * 4 * e
    return fwd, bwd


def ss2d_bytes(channels, side, dtype):
    length = side * side
    e = torch.finfo(dtype).bits // 8
    x, seq, group = BATCH * channels * length, BATCH * GROUPS * channels * length, BATCH * GROUPS * length
    fwd = x * e + seq * e + group * 2 * e + x * 4                  # x, delta, B, C in; y (fp32) out
    bwd = x * e + seq * e + group * 2 * e + x * 4 + x * e + seq * e + group * 2 * e
    return fwd, bwd


def time_fwd_bwd(fn, leaves):
    """``(fwd, bwd, fwd eager, bwd eager)`` of ``fn()``, whose output is differentiated w.r.t.
    ``leaves``: CUDA-graph replays (``GraphTime``) and eager wall time (ms)."""
    stream = torch.cuda.Stream()  # the backward is captured on the stream its forward ran on
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = fn()
        dy = torch.randn_like(out)
    torch.cuda.current_stream().wait_stream(stream)
    backward = lambda: torch.autograd.grad(out, leaves, dy, retain_graph=True)  # noqa: E731
    return graph_bench(fn), graph_bench(backward, stream), bench(fn), bench(backward)


def row(shape, dname, name, times, floors):
    """A table row from ``(fwd, bwd, fwd eager, bwd eager)``: each pass's GPU time (kernels) followed by
    its ratio to the floor; then the replays between events, then the eager times."""
    fwd, bwd, fwd_eager, bwd_eager = times
    return (shape, dname, name, fwd.kernels, fwd.kernels / floors[0], bwd.kernels, bwd.kernels / floors[1],
            fwd.replay, bwd.replay, fwd_eager, bwd_eager)


def floor_row(shape, dname, floors, name="floor"):
    """The floors in every column."""
    graph_times = [GraphTime(t, t) for t in floors]
    return row(shape, dname, name, (*graph_times, *floors), floors)


def same_size_copy_row(shape, dname, byte_counts, floors):
    """``same_size_copy`` of each pass's floor bytes.  (Its eager columns repeat the replays.)"""
    times = [same_size_copy(nbytes) for nbytes in byte_counts]
    return row(shape, dname, "copy of the same bytes", (*times, *(t.replay for t in times)), floors)


def cuda_ext():
    import segman_selective_scan

    return segman_selective_scan


def scan_rows(bw, only=None, kernel_modes=False):
    rows = []
    for channels, side in STAGES:
        for dname, dtype in DTYPES.items():
            inputs = scan_inputs(channels, side, dtype)
            fwd_bytes, bwd_bytes = scan_bytes(channels, side, dtype)
            shape, floors = f"C={channels} L={side}²", (fwd_bytes / bw, bwd_bytes / bw)
            rows.append(floor_row(shape, dname, floors))
            rows.append(same_size_copy_row(shape, dname, (fwd_bytes, bwd_bytes), floors))
            for backend in SCAN.BACKENDS:
                if only is not None and backend.name not in only:
                    continue
                reason = backend.can_run(*inputs.values())
                if reason:
                    print(f"  skip {backend.name}: {reason}")
                    continue
                variants = [(backend.name, None)]
                if backend.name == "cuda" and kernel_modes:  # each variant, forced (set_kernel_modes)
                    variants = [("cuda", (0, 0)), ("cuda, warp per row, low occupancy", (1, 1)),
                                ("cuda, warp per row, high occupancy", (2, 2)),
                                ("cuda, fwd block per row (bwd default)", (3, 0))]
                for name, modes in variants:
                    if modes is not None:
                        cuda_ext().set_kernel_modes(*modes)
                    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
                    fn = lambda: selective_scan(**leaves, backend=backend.name)  # noqa: E731
                    rows.append(row(shape, dname, name, time_fwd_bwd(fn, list(leaves.values())), floors))
                    del leaves
                    torch.cuda.empty_cache()
                if len(variants) > 1:
                    cuda_ext().set_kernel_modes(0, 0)
    return rows


def scan_pick(x, leaves, channels):
    """Names of the backends that automatic selection uses for the unfused SS2D step."""
    xs_mod = importlib.import_module("segman.ops.cross_scan")
    xs_name = next(b.name for b in xs_mod.SCAN_BACKENDS if b.can_run(x) is None)
    u = torch.empty(x.shape[0], GROUPS * channels, x.shape[2] * x.shape[3], device=x.device, dtype=x.dtype)
    scan_name = next(b.name for b in SCAN.BACKENDS if b.can_run(u, *leaves.values()) is None)
    return f"{xs_name} + {scan_name} + {xs_name}"


def ss2d_rows(bw):
    rows = []
    ops = importlib.import_module("segman.ops")
    fused = getattr(ops, "ss2d_scan", None)
    for channels, side in STAGES:
        for dname, dtype in DTYPES.items():
            inputs = scan_inputs(channels, side, dtype)
            x = torch.randn(BATCH, channels, side, side, device="cuda").to(dtype)
            fwd_bytes, bwd_bytes = ss2d_bytes(channels, side, dtype)
            shape, floors = f"C={channels} L={side}²", (fwd_bytes / bw, bwd_bytes / bw)
            rows.append(floor_row(shape, dname, floors))
            leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if k != "u"}
            xl = x.clone().requires_grad_()
            params = [xl, *leaves.values()]

            def unfused(scan_backend=None, xs_backend=None):
                xs = cross_scan(xl, backend=xs_backend).view(BATCH, GROUPS * channels, side * side)
                y = selective_scan(xs, **leaves, backend=scan_backend)
                return cross_merge(y.view(BATCH, GROUPS, channels, side, side), backend=xs_backend)

            variants = [(f"unfused: {scan_pick(xl, leaves, channels)}", lambda: unfused()),
                        ("unfused: torch ×3", lambda: unfused("torch", "torch"))]
            if fused is not None:
                variants.append(("fused: triton ss2d_scan", lambda: fused(xl, **leaves, backend="triton")))
            for name, fn in variants:
                try:
                    times = time_fwd_bwd(fn, params)
                except Exception as e:  # a backend that cannot run these inputs
                    print(f"  skip {name}: {e}")
                    continue
                rows.append(row(shape, dname, name, times, floors))
            torch.cuda.empty_cache()
    return rows


def sweep():
    """Triton selective-scan launch configurations at every shape (prints the best per shape)."""
    from segman.ops.triton_backend import selective_scan as ts

    saved = dict(ts.CONFIG)
    for channels, side in STAGES:
        for dname, dtype in DTYPES.items():
            inputs = scan_inputs(channels, side, dtype)
            results = []
            for block_t in (512, 1024, 2048):
                for block_c, warps in ((1, 4), (2, 4), (4, 4), (4, 8)):
                    ts.CONFIG.update(block_t=block_t, fwd=(block_c, warps), bwd=(block_c, warps))
                    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
                    try:
                        fwd, bwd, _, _ = time_fwd_bwd(lambda: selective_scan(**leaves, backend="triton"),
                                                      list(leaves.values()))
                    except Exception as e:  # noqa: BLE001 (e.g. out of registers / shared memory)
                        print(f"  C={channels} {dname} T={block_t} c={block_c} w={warps}: {type(e).__name__}")
                        continue
                    results.append((fwd.kernels, bwd.kernels, block_t, block_c, warps))
                    print(f"  C={channels} {dname} T={block_t} c={block_c} w={warps}: "
                          f"fwd {fwd.kernels * 1e3:.0f} us, bwd {bwd.kernels * 1e3:.0f} us", flush=True)
            best_f = min(results)
            best_b = min(results, key=lambda r: r[1])
            print(f"BEST C={channels} {dname}: fwd T={best_f[2]} c={best_f[3]} w={best_f[4]} ({best_f[0] * 1e3:.0f} us); "
                  f"bwd T={best_b[2]} c={best_b[3]} w={best_b[4]} ({best_b[1] * 1e3:.0f} us)", flush=True)
    ts.CONFIG.clear()
    ts.CONFIG.update(saved)


def cross_rows(bw):
    """cross_scan / cross_merge alone (each one's backward is the other): read once, write once."""
    xs_mod = importlib.import_module("segman.ops.cross_scan")
    rows = []
    for channels, side in STAGES:
        for dname, dtype in DTYPES.items():
            x = torch.randn(BATCH, channels, side, side, device="cuda").to(dtype)
            y = torch.randn(BATCH, GROUPS, channels, side, side, device="cuda").to(dtype)
            e = torch.finfo(dtype).bits // 8
            floors = (5 * x.numel() * e / bw,) * 2
            shape = f"C={channels} L={side}²"
            rows.append(floor_row(shape, dname, floors, "floor (scan: 1 read + 4 writes; merge: 4 + 1)"))
            for backend in xs_mod.SCAN_BACKENDS:
                if backend.can_run(x):
                    continue
                calls = (lambda: cross_scan(x, backend=backend.name), lambda: cross_merge(y, backend=backend.name))
                times = [graph_bench(f) for f in calls] + [bench(f) for f in calls]
                rows.append(row(shape, dname, backend.name, times, floors))
    return rows


def format_table(title, rows, cols=("fwd", "bwd")):
    a, b = cols
    lines = [f"### {title}", "",
             f"| shape (B=16, K=4) | dtype | backend | {a} µs | {a} / floor | {b} µs | {b} / floor "
             f"| {a} replay µs | {b} replay µs | {a} eager µs | {b} eager µs |",
             "|---|---|---|" + "---:|" * 8]
    for shape, dname, name, *times in rows:
        cells = " | ".join(f"{t:.2f}" if i in (1, 3) else f"{t * 1e3:.0f}" for i, t in enumerate(times))
        lines.append(f"| {shape} | {dname} | {name} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="also sweep the Triton launch configurations")
    parser.add_argument("--skip-ss2d", action="store_true")
    parser.add_argument("--only", nargs="*", help="time only these selective_scan backends (and skip the other tables)")
    parser.add_argument("--kernel-modes", action="store_true",
                        help="also time each CUDA kernel variant forced (set_kernel_modes)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave the results file alone")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    env = environment()
    bw = copy_bandwidth()
    rows = scan_rows(bw, args.only, args.kernel_modes)
    cross = [] if args.only else cross_rows(bw)
    ss2d = [] if args.skip_ss2d or args.only else ss2d_rows(bw)
    tables = [format_table("selective_scan (d_state 1)", rows)]
    if cross:
        tables.append(format_table("cross_scan / cross_merge", cross, cols=("cross_scan", "cross_merge")))
    if ss2d:
        tables.append(format_table("SS2D step: cross_scan → selective_scan → cross_merge", ss2d))
    text = (f"# Selective scan, cross-scan / cross-merge and the SS2D step (`benchmarks/scan_gpu.py`)\n\n"
            f"{env}; CUDA {torch.version.cuda}; copy bandwidth {bw / 1e9:.2f} TB/s (read + write). µs: GPU time "
            f"of a CUDA-graph replay, first kernel's start to last kernel's end, L2 flushed; replay: the same "
            f"between CUDA events; eager: called from Python.\n\n" + "\n\n".join(tables) + "\n")
    print("\n" + text)
    if not args.no_write:
        write_results("scan_gpu", text)
    if args.sweep:
        sweep()


if __name__ == "__main__":
    main()
