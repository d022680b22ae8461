"""CPU inference time of the SegMAN segmentors (backbone + MMSC decoder) on one 512×512 image.

Each model runs under ``torch.inference_mode()`` in eval mode: one warm-up forward, then the
median of ``--repeats`` forwards.  The forward returns the 1/8-resolution logits (150 ADE20K
classes), as ``SegMAN.forward`` does; the final resize to 512×512 is not included.

With ``--onnx`` each model is also exported (``segman.export``, the same forward) and timed in
onnxruntime on the same threads, the way a deployed file runs.

Printed and written to ``benchmarks/results/model_cpu.md`` (overwritten).

Usage: python benchmarks/model_cpu.py [--threads 2] [--repeats 5] [--variants t s] [--onnx] [--no-write]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from report import environment, write_results
from segman.models import SegMAN


def median_ms(model: Callable, img: torch.Tensor, repeats: int) -> float:
    """Median wall time of ``model(img)`` in ms after one warm-up call."""
    with torch.inference_mode():
        model(img)
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(img)
            samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def onnxruntime_ms(model: torch.nn.Module, img: torch.Tensor, repeats: int, threads: int) -> float:
    """:func:`median_ms` of the model exported to ONNX and run by onnxruntime on ``threads`` threads."""
    from segman.export import OnnxModel, export_onnx

    with tempfile.TemporaryDirectory() as folder:
        path = export_onnx(model, str(Path(folder) / "model.onnx"), shape=img.shape[-2:])
        return median_ms(OnnxModel(path, threads=threads), img.numpy(), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=["t", "s"], choices=["t", "s", "b", "l"])
    parser.add_argument("--size", type=int, default=512, help="square input side (multiple of 32, >= 224)")
    parser.add_argument("--onnx", action="store_true", help="also time the exported model in onnxruntime")
    parser.add_argument("--no-write", action="store_true", help="print only; leave the results file alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    env = environment("cpu", args.threads)  # before the timings: the load of other processes
    torch.manual_seed(0)
    img = torch.randn(1, 3, args.size, args.size)

    rows = []
    for variant in args.variants:
        model = SegMAN(variant, num_classes=150).eval()
        params = sum(p.numel() for p in model.parameters())
        onnx_ms = onnxruntime_ms(model, img, args.repeats, args.threads) if args.onnx else None
        rows.append((f"SegMAN-{variant.upper()}", params, median_ms(model, img, args.repeats), onnx_ms))

    setting = f"input 1×3×{args.size}×{args.size}, inference mode, median of {args.repeats} forwards"
    if args.onnx:
        import onnxruntime
        setting += f", onnxruntime {onnxruntime.__version__}"
    onnx_head, onnx_rule = (f" {'onnxruntime ms':>14} |", f"{'-' * 16}|") if args.onnx else ("", "")
    lines = [f"| {'model':<10} | {'params':>12} | {'PyTorch ms':>10} |{onnx_head}",
             f"|{'-' * 12}|{'-' * 14}|{'-' * 12}|{onnx_rule}"]
    lines += [f"| {name:<10} | {params:>12,} | {ms:>10.1f} |" + (f" {onnx_ms:>14.1f} |" if args.onnx else "")
              for name, params, ms, onnx_ms in rows]
    text = "\n".join(lines)
    print(f"{env}; {setting}\n{text}")
    if not args.no_write:
        write_results("model_cpu", f"# SegMAN on the CPU (`benchmarks/model_cpu.py`)\n\n{env}; {setting}.\n\n{text}\n")


if __name__ == "__main__":
    main()
