"""End-to-end GPU speed of SegMAN against SegFormer, as a user trains and deploys them.

Each model runs at 512×512 under bf16 autocast, eagerly and compiled:

* training: forward, logits resized bilinearly to the 512² label (as mmseg does: SegFormer with
  ``F.interpolate``, SegMAN with ``segman.ops.bilinear_resize`` as its mmseg head does), cross-entropy
  (ignore index 255), backward and a fused AdamW step; ``train16`` and ``train4`` (the paper's batch per
  GPU) are the batch sizes;
* inference: forward and the resize of the logits to the input, under ``torch.inference_mode``;
  ``infer16`` (throughput) and ``infer1`` (latency);
* modes: ``eager``; ``compile`` (``torch.compile(fullgraph=True)``: SegMAN block by block with
  ``segman.models.compile_regions`` plus the resize and loss, SegFormer whole; the optimizer step
  eager); ``compile-cg`` (the same with ``mode="reduce-overhead"``: Inductor replays CUDA graphs);
  ``cuda_graph`` (SegMAN only: the encoder's own CUDA-graph training).

SegMAN-T/S come from ``segman.models.SegMAN`` (150 classes, the ADE20K heads), SegFormer-B0/B2 from HF
``transformers`` (``SegformerForSemanticSegmentation`` built from its config: the benchmark needs no
weights).  ``transformers`` is a benchmark-only dependency.

Printed and written to ``benchmarks/results/e2e_gpu.md`` (overwritten): img/s (median of
``--repeats`` timings of ``--steps`` steps each, CUDA events), peak allocated memory, and each SegMAN
row's ratio to the best mode of its SegFormer peer for the same work (img/s over img/s; for ``infer1``,
latency ≤ the peer's is a ratio ≥ 1).

Usage: python benchmarks/e2e_gpu.py [--models segman_s segformer_b2] [--modes eager compile]
       [--work train16 train4 infer16 infer1] [--profile segman_s:compile:train16]
"""
from __future__ import annotations

import argparse
import sys
from functools import partial
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from gpu_timing import step_time
from report import environment, write_results

SIZE = 512
NUM_CLASSES = 150
IGNORE_INDEX = 255
PEERS = {"segman_t": "segformer_b0", "segman_s": "segformer_b2"}
WORK = {"train16": ("train", 16), "train4": ("train", 4), "infer16": ("infer", 16), "infer1": ("infer", 1)}
MODES = ("eager", "compile", "compile-cg", "cuda_graph")

# SegFormer configurations (Xie et al., 2021), as in HF transformers' nvidia/mit-b0 and mit-b2
SEGFORMER = {
    "segformer_b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "segformer_b2": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], decoder_hidden_size=768),
}


def build(name: str, mode: str) -> torch.nn.Module:
    """The model on the GPU, as a module whose ``forward(img)`` returns logits."""
    if name.startswith("segman_"):
        from segman.models import SegMAN

        return SegMAN(name[-1], num_classes=NUM_CLASSES, cuda_graph=mode == "cuda_graph").cuda()
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(num_labels=NUM_CLASSES, **SEGFORMER[name])
    return Logits(SegformerForSemanticSegmentation(config)).cuda()


class Logits(torch.nn.Module):
    """A HF segmentation model as ``img -> logits``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=img).logits


def _resized(logits, size):
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _resized_loss(logits, label, resize=_resized):
    return F.cross_entropy(resize(logits, label.shape[-2:]), label, ignore_index=IGNORE_INDEX)


COMPILE_OPTIONS = {"compile": {}, "compile-cg": {"mode": "reduce-overhead"}}


def _compiled(fn: Callable, mode: str, fullgraph: bool = True) -> Callable:
    if mode in COMPILE_OPTIONS:
        return torch.compile(fn, fullgraph=fullgraph, dynamic=False, **COMPILE_OPTIONS[mode])
    return fn


def make_step(model: torch.nn.Module, kind: str, mode: str, batch: int) -> Callable[[], None]:
    """One training or inference step on fixed random data.  Compiled SegMAN compiles its blocks
    (``segman.models.compile_regions``) and, separately, the resize and loss; SegFormer compiles whole."""
    img = torch.randn(batch, 3, SIZE, SIZE, device="cuda")
    if isinstance(model, Logits):  # transformers' SegFormer breaks the graph once (a lock around its output hooks)
        loss_fn = _compiled(lambda model, img, label: _resized_loss(model(img), label), mode, fullgraph=False)
        predict = _compiled(lambda model, img: _resized(model(img), img.shape[-2:]), mode, fullgraph=False)
    else:  # SegMAN as its mmseg head trains it: the logits resized by segman.ops.bilinear_resize
        from segman.models import compile_regions
        from segman.ops import bilinear_resize

        if mode in COMPILE_OPTIONS:
            compile_regions(model, **COMPILE_OPTIONS[mode])
        loss_head = _compiled(partial(_resized_loss, resize=bilinear_resize), mode)
        resize = _compiled(bilinear_resize, mode)
        loss_fn = lambda model, img, label: loss_head(model(img), label)  # noqa: E731
        predict = lambda model, img: resize(model(img), img.shape[-2:])  # noqa: E731
    if kind == "train":
        model.train()
        label = torch.randint(0, NUM_CLASSES, (batch, SIZE, SIZE), device="cuda")
        optimizer = torch.optim.AdamW(model.parameters(), lr=6e-5, fused=True)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = loss_fn(model, img, label)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step
    model.eval()

    def step():
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            predict(model, img)
    return step


def measure(name: str, mode: str, work: str, args) -> Optional[dict]:
    kind, batch = WORK[work]
    if mode == "cuda_graph" and (not name.startswith("segman_") or kind != "train"):
        return None
    torch._dynamo.reset()
    torch.cuda.empty_cache()
    torch.manual_seed(0)
    model = build(name, mode)
    step = make_step(model, kind, mode, batch)
    torch.cuda.reset_peak_memory_stats()
    ms, first_s = step_time(step, args.steps, args.repeats, args.warmup)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30
    del model, step
    return dict(model=name, mode=mode, work=work, ms=ms, img_s=batch * 1000 / ms, peak_gib=peak, first_s=first_s)


def profile(spec: str, args) -> None:
    """Top GPU kernels of one ``model:mode:work`` step (torch.profiler)."""
    name, mode, work = spec.split(":")
    kind, batch = WORK[work]
    torch._dynamo.reset()
    model = build(name, mode)
    step = make_step(model, kind, mode, batch)
    step_time(step, 1, 1, args.warmup)
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    total = sum(e.self_device_time_total for e in events) / 3 / 1000
    count = sum(e.count for e in events) / 3
    print(f"\nprofile {spec}: {total:.1f} ms of GPU kernels per step in {count:.0f} launches")
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:args.profile_top]:
        print(f"  {e.self_device_time_total / 3 / 1000:8.2f} ms  {e.count // 3:5d}x  {e.key[:110]}")


def table(rows: list[dict]) -> str:
    best = {}
    for r in rows:
        key = (r["model"], r["work"])
        best[key] = max(best.get(key, 0.0), r["img_s"])
    lines = ["| model | mode | work | ms/step | img/s | peak GiB | first step s | ÷ peer's best |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        peer = best.get((PEERS.get(r["model"]), r["work"]))
        ratio = f"{r['img_s'] / peer:.2f}×" if peer else ""
        lines.append(f"| {r['model']} | {r['mode']} | {r['work']} | {r['ms']:.2f} | {r['img_s']:.1f} | "
                     f"{r['peak_gib']:.1f} | {r['first_s']:.0f} | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["segman_s", "segformer_b2", "segman_t", "segformer_b0"])
    parser.add_argument("--modes", nargs="+", default=["eager", "compile", "compile-cg"], choices=MODES)
    parser.add_argument("--work", nargs="+", default=list(WORK), choices=list(WORK))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--profile", nargs="*", default=[], help="model:mode:work to profile after the table")
    parser.add_argument("--profile-top", type=int, default=25)
    parser.add_argument("--no-write", action="store_true", help="print only; leave the results file alone")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("e2e_gpu.py needs a CUDA GPU")
    torch.backends.cudnn.benchmark = True
    torch._dynamo.config.cache_size_limit = 64
    env = environment()
    print(env, flush=True)
    rows = []
    for name in args.models:
        for mode in args.modes:
            for work in args.work:
                row = measure(name, mode, work, args)
                if row is not None:
                    rows.append(row)
                    print(f"{name:13s} {mode:10s} {work:8s} {row['ms']:8.2f} ms {row['img_s']:8.1f} img/s "
                          f"{row['peak_gib']:5.1f} GiB  first step {row['first_s']:.0f} s", flush=True)
    text = table(rows)
    print("\n" + text)
    if not args.no_write:
        write_results("e2e_gpu", f"# End to end: SegMAN against SegFormer (`benchmarks/e2e_gpu.py`)\n\n{env}; "
                      f"512×512, bf16 autocast, median of {args.repeats} × {args.steps} steps.\n\n{text}\n")
    for spec in args.profile:
        profile(spec, args)


if __name__ == "__main__":
    main()
