"""CPU timings of the reference ops at SegMAN-S stage-1 shapes (512×512 image, batch 1).

Shapes: selective scan with 4 directions × 64 channels × 16384 steps (d_state 1); cross-scan /
cross-merge of a (1, 64, 128, 128) map; neighborhood attention with 2 heads × 32 dims on 128×128,
kernel 11, with RPB.  Baselines measured in the same run: a sequential per-step scan loop (what a
naive reference does), and NATTEN's own CPU path (no RPB; only when natten is installed).

Printed and written to ``benchmarks/results/ops_cpu.md`` (overwritten): the median wall time of each call.

Usage: python benchmarks/ops_cpu.py [--threads 2] [--repeats 5] [--no-write]
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from report import environment, write_results
from segman.ops import cross_merge, cross_scan, neighborhood_attention_2d, selective_scan


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time in ms after one warm-up call."""
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def forward_backward(fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor]) -> Callable[[], None]:
    def run():
        for t in inputs:
            t.grad = None
        fn(*inputs).sum().backward()
    return run


def sequential_scan(u, delta, A, B, C, D, delta_bias):
    """Naive baseline: one Python step per time step (N = 1 layout of SegMAN)."""
    dt = F.softplus(delta + delta_bias[:, None])
    groups = B.shape[1]
    Bc = B.repeat_interleave(u.shape[1] // groups, 1)[:, :, 0]
    Cc = C.repeat_interleave(u.shape[1] // groups, 1)[:, :, 0]
    decay = torch.exp(dt * A[:, 0, None])
    drive = dt * u * Bc
    h = torch.zeros_like(u[..., 0])
    ys = []
    for t in range(u.shape[-1]):
        h = decay[..., t] * h + drive[..., t]
        ys.append(h * Cc[..., t])
    return torch.stack(ys, -1) + D[:, None] * u


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only; leave the results file alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    env = environment("cpu", args.threads)  # before the timings: the load of other processes
    torch.manual_seed(0)

    rows: list[tuple[str, str, float]] = []
    channels, groups, length = 64, 4, 128 * 128
    u = torch.randn(1, groups * channels, length, requires_grad=True)
    delta = torch.randn(1, groups * channels, length, requires_grad=True)
    A = (-torch.rand(groups * channels, 1) - 0.5).requires_grad_()
    B = torch.randn(1, groups, 1, length, requires_grad=True)
    C = torch.randn(1, groups, 1, length, requires_grad=True)
    D = torch.ones(groups * channels, requires_grad=True)
    bias = torch.randn(groups * channels, requires_grad=True)
    scan_inputs = [u, delta, A, B, C, D, bias]
    with torch.no_grad():
        rows.append(("selective_scan 256×16384", "segman torch, fwd", timed(lambda: selective_scan(*scan_inputs), args.repeats)))
        rows.append(("selective_scan 256×16384", "sequential loop, fwd", timed(lambda: sequential_scan(*scan_inputs), 1)))
    rows.append(("selective_scan 256×16384", "segman torch, fwd+bwd", timed(forward_backward(selective_scan, scan_inputs), args.repeats)))
    rows.append(("selective_scan 256×16384", "sequential loop, fwd+bwd", timed(forward_backward(sequential_scan, scan_inputs), 1)))

    x = torch.randn(1, channels, 128, 128, requires_grad=True)
    with torch.no_grad():
        rows.append(("cross_scan+merge 64×128²", "segman torch, fwd",
                     timed(lambda: cross_merge(cross_scan(x).view(1, 4, channels, 128, 128)), args.repeats)))
    rows.append(("cross_scan+merge 64×128²", "segman torch, fwd+bwd",
                 timed(forward_backward(lambda t: cross_merge(cross_scan(t).view(1, 4, channels, 128, 128)), [x]), args.repeats)))

    heads, head_dim, size, kernel = 2, 32, 128, 11
    q, k, v = (torch.randn(1, heads, size, size, head_dim, requires_grad=True) for _ in range(3))
    rpb = torch.zeros(heads, 2 * kernel - 1, 2 * kernel - 1, requires_grad=True)
    na = lambda q, k, v, r: neighborhood_attention_2d(q, k, v, kernel, rpb=r)
    case = f"NA {heads}×{head_dim}, {size}², K{kernel}"
    with torch.no_grad():
        rows.append((case, "segman torch + rpb, fwd", timed(lambda: na(q, k, v, rpb), args.repeats)))
    rows.append((case, "segman torch + rpb, fwd+bwd", timed(forward_backward(na, [q, k, v, rpb]), args.repeats)))
    try:
        import natten
        from natten.functional import na2d
    except ImportError:
        natten = None
    if natten is not None:
        # natten's layout is (B, H, W, heads, head_dim) and it has no RPB
        qn, kn, vn = (t.detach().transpose(1, 3).transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
        rival = lambda q, k, v: na2d(q, k, v, kernel_size=kernel)
        try:
            with torch.no_grad():
                rows.append((case, f"natten {natten.__version__} (no rpb), fwd", timed(lambda: rival(qn, kn, vn), args.repeats)))
            rows.append((case, f"natten {natten.__version__} (no rpb), fwd+bwd", timed(forward_backward(rival, [qn, kn, vn]), args.repeats)))
        except Exception as exc:  # natten's CPU path may be missing in a build without libnatten
            rows.append((case, f"natten {natten.__version__}: {type(exc).__name__}: {str(exc)[:60]}", float("nan")))

    lines = [f"| {'op / shape':<28} | {'implementation':<42} | {'ms':>9} |",
             f"|{'-' * 30}|{'-' * 44}|{'-' * 11}|"]
    lines += [f"| {case_name:<28} | {impl:<42} | {ms:>9.1f} |" for case_name, impl, ms in rows]
    text = "\n".join(lines)
    print(f"{env}\n{text}")
    if not args.no_write:
        write_results("ops_cpu", f"# Reference ops on the CPU (`benchmarks/ops_cpu.py`)\n\n{env}; SegMAN-S "
                      f"stage-1 shapes, batch 1, median of {args.repeats} calls (the sequential loop: one).\n\n{text}\n")


if __name__ == "__main__":
    main()
