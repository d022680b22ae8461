"""Measure SegMAN inference throughput (images per second) on synthetic input.

    python tools/benchmark.py local_configs/segman/tiny/segman_t_ade.py                       # GPU if present
    python tools/benchmark.py local_configs/segman/base/segman_b_cityscapes.py CKPT --amp --shape 1024 2048
    python tools/benchmark.py local_configs/segman/tiny/segman_t_ade.py --device cpu --images 5 --warmup 1

Each step runs the segmentor's whole-image ``encode_decode`` (backbone, decode head and the bilinear
resize of the logits to the input size) on a random ``batch×3×H×W`` tensor already on the device,
under ``torch.inference_mode()``.  Data loading, pre-processing, sliding windows and post-processing
(softmax, argmax, resize to the original image) are **not** included.  ``--warmup`` images run first
and are not timed; then ``--images`` images are timed (CUDA is synchronised before the clock starts and
stops).  ``--amp`` runs under bfloat16 autocast (CUDA and CPU), otherwise fp32.  Without a checkpoint
the weights are random, which does not change the speed.
"""
from __future__ import annotations

import argparse
import math
import os.path as osp
import platform
import sys
import time
from contextlib import nullcontext
from typing import List, Optional

import torch

from segman.models import COMPILE_MODES, compile_regions

DEFAULT_SHAPE = (512, 512)
CITYSCAPES_SHAPE = (1024, 2048)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Inference throughput of a SegMAN segmentor (synthetic input)")
    parser.add_argument("config", help="config file, e.g. local_configs/segman/tiny/segman_t_ade.py")
    parser.add_argument("checkpoint", nargs="?", help="optional checkpoint (weights do not change the speed)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast (default fp32)")
    parser.add_argument("--shape", type=int, nargs="+", metavar="SIZE",
                        help="input H W, or one size for a square (default 512×512, 1024×2048 for Cityscapes)")
    parser.add_argument("--images", type=int, default=200, help="images to time (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed images first (default 20)")
    parser.add_argument("--batch", type=int, default=1, help="images per forward pass (default 1)")
    parser.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                        choices=COMPILE_MODES,
                        help="torch.compile the SegMAN blocks (segman.models.compile_regions) with this "
                             "torch.compile mode (default: 'default'; 'reduce-overhead' replays CUDA graphs) "
                             "before timing")
    args = parser.parse_args(argv)
    if args.images < 1 or args.batch < 1 or args.warmup < 0:
        parser.error("--images and --batch must be >= 1 and --warmup >= 0")
    if args.shape is not None and len(args.shape) not in (1, 2):
        parser.error(f"--shape takes H W or one size S, got {len(args.shape)} values")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was given but no CUDA device is available")
    return args


def build_model(config: str, checkpoint: Optional[str], device: torch.device):
    """The config's segmentor in eval mode on ``device`` (BN instead of SyncBN, no ImageNet weights)."""
    from mmcv.cnn.utils import revert_sync_batchnorm
    from mmcv.runner import load_checkpoint

    import segman_mmseg  # noqa: F401  (registers the SegMAN types)
    from segman_mmseg.config_checks import load_config
    from mmseg.models import build_segmentor

    cfg = load_config(config)
    if checkpoint is not None and not osp.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint '{checkpoint}' does not exist")
    cfg.model.backbone.pretrained = None
    cfg.model.pretrained = None
    model = build_segmentor(cfg.model, train_cfg=cfg.get("train_cfg"), test_cfg=cfg.get("test_cfg"))
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, map_location="cpu")
    return cfg, revert_sync_batchnorm(model).to(device).eval()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"CPU ({cpu}, {torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: Optional[List[str]] = None) -> dict:
    """Run the benchmark, print the result and return it as a dict."""
    from tqdm import tqdm

    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg, model = build_model(args.config, args.checkpoint, device)
    if args.compile:
        compile_regions(model, mode=args.compile)
    if args.shape is None:
        is_cityscapes = "cityscapes" in str(cfg.get("dataset_type", "")).lower()
        shape = CITYSCAPES_SHAPE if is_cityscapes else DEFAULT_SHAPE
    else:
        shape = (args.shape[0], args.shape[-1])
    img = torch.randn(args.batch, 3, *shape, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.amp else nullcontext()
    precision = "bf16 autocast" if args.amp else "fp32"

    print(f"Device: {device_name(device)}")
    print(f"Config: {args.config}  ({'random weights' if args.checkpoint is None else args.checkpoint})")
    print(f"Input: {args.batch}×3×{shape[0]}×{shape[1]}, {precision}; synthetic tensors, data loading excluded")

    warmup_steps = math.ceil(args.warmup / args.batch)
    steps = math.ceil(args.images / args.batch)
    with torch.inference_mode(), autocast:
        for _ in range(warmup_steps):
            model.forward_dummy(img)
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in tqdm(range(steps), desc="timed", unit="step", file=sys.stdout):
            model.forward_dummy(img)
        _sync(device)
        elapsed = time.perf_counter() - start

    images = steps * args.batch
    result = dict(device=device_name(device), shape=shape, batch=args.batch, amp=args.amp, images=images,
                  seconds=elapsed, images_per_s=images / elapsed, ms_per_image=1000 * elapsed / images)
    print(f"Timed {images} images in {elapsed:.2f} s: {result['images_per_s']:.2f} images/s, "
          f"{result['ms_per_image']:.1f} ms/image")
    if device.type == "cuda":
        result["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
        print(f"Peak CUDA memory: {result['peak_memory_mib']:.0f} MiB")
    return result


if __name__ == "__main__":
    try:
        main()
    except FileNotFoundError as exc:
        sys.exit(f"error: {exc}")
