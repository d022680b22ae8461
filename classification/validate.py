"""Top-1 / top-5 of a SegMAN encoder checkpoint on an ImageFolder split (timm's validate).

    python classification/validate.py --data-dir /data/imagenet --model SegMANEncoder_s \\
        --checkpoint pretrained/SegMAN_Encoder_s.pth.tar --use-ema [--results-file results.json]
    bash scripts/validate.sh SegMANEncoder_s pretrained/SegMAN_Encoder_s.pth.tar /data/imagenet --use-ema

The model is built through timm by name.  Evaluation uses timm's transform with the variant's
``pretrained_cfg``: bicubic resize to ``224 / crop_pct`` (crop_pct 0.9 for T/S, 0.95 for B/L),
centre crop 224, ImageNet mean/std.  ``--use-ema`` takes ``state_dict_ema`` from the checkpoint,
otherwise ``state_dict`` (a bare state_dict works too).  The class count is read from the
checkpoint's classifier.  Every key must match.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, Optional, Sequence

import timm
import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.data import resolve_data_config
from tqdm import tqdm

import segman.models  # noqa: F401  (registers SegMANEncoder_{t,s,b,l} with timm)
from segman.models import CheckpointError, load_checkpoint_file, load_encoder_checkpoint

from imagefolder import check_image_folder, create_eval_loader
from recipes import resolve_recipe

__all__ = ["evaluate", "select_state_dict", "main"]

CLASSIFIER_WEIGHT = "classifier.4.weight"


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Any, device: torch.device, amp_dtype: Optional[torch.dtype] = None,
             distributed: bool = False, progress: bool = False, desc: str = "val") -> dict[str, float]:
    """Mean cross-entropy, top-1 and top-5 (in %) of ``model`` over ``loader``.

    Args:
        loader: yields normalised images and integer targets on ``device`` (timm's prefetcher).
        amp_dtype: autocast dtype, or None for full precision.
        distributed: sum the counts over all ranks (each holds a shard of the split).
        progress: show a tqdm bar.
    """
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top-1 hits, top-5 hits, images
    for images, targets in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        logits = logits.float()
        hits = logits.topk(min(5, logits.size(1)), dim=1).indices == targets[:, None]
        totals += torch.stack([F.cross_entropy(logits, targets, reduction="sum"), hits[:, 0].sum(), hits.sum(),
                               torch.tensor(targets.numel(), device=device)]).to(totals)
    if distributed:
        dist.all_reduce(totals)
    loss, top1, top5, count = totals.tolist()
    count = max(count, 1)
    return {"loss": loss / count, "top1": 100 * top1 / count, "top5": 100 * top5 / count}


def select_state_dict(checkpoint: Any, use_ema: bool, path: str) -> Mapping[str, Any]:
    """``state_dict_ema`` (``use_ema``) or ``state_dict`` of a timm training checkpoint.

    A file holding only a state_dict is taken as it is (unless ``use_ema`` asks for more).
    """
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{path!r} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    key = "state_dict_ema" if use_ema else "state_dict"
    if isinstance(checkpoint.get(key), Mapping):
        return checkpoint[key]
    if use_ema:
        raise CheckpointError(f"{path!r} has no state_dict_ema (top-level keys: {', '.join(map(str, checkpoint))}); "
                              f"drop --use-ema to evaluate its weights")
    if isinstance(checkpoint.get("state_dict_ema"), Mapping):  # an EMA-only file
        return checkpoint["state_dict_ema"]
    return checkpoint


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="ImageFolder root holding <split>/<class>/<image>")
    parser.add_argument("--split", default="val", help="the folder under --data-dir to evaluate")
    parser.add_argument("--model", default="SegMANEncoder_t", help="timm name of the SegMAN encoder")
    parser.add_argument("--checkpoint", required=True, help="train.py's or an official checkpoint, or a state_dict")
    parser.add_argument("--use-ema", action="store_true", help="evaluate state_dict_ema instead of state_dict")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classifier size (default: read from the checkpoint's classifier, else 1000)")
    parser.add_argument("--batch-size", "-b", type=int, default=128)
    parser.add_argument("--workers", "-j", type=int, default=8, help="data loading processes")
    parser.add_argument("--img-size", type=int, default=None, help="input size (default: the model's 224)")
    parser.add_argument("--crop-pct", type=float, default=None, help="centre-crop fraction (default: the model's)")
    parser.add_argument("--interpolation", default=None, help="resize interpolation (default: the model's bicubic)")
    parser.add_argument("--amp", action="store_true", help="evaluate under autocast")
    parser.add_argument("--amp-dtype", default="float16", choices=("float16", "bfloat16"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--results-file", default=None, help="also write the results as JSON here")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm bar")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Evaluate one checkpoint; print the results and return them as a dict."""
    args = parse_args(argv)
    resolve_recipe(args.model)  # unknown names fail here, listing the SegMAN names
    if not os.path.isfile(args.checkpoint):
        raise FileNotFoundError(f"checkpoint {args.checkpoint!r} not found")
    classes = check_image_folder(args.data_dir, (args.split,))
    device = torch.device(args.device)

    state_dict = select_state_dict(load_checkpoint_file(args.checkpoint), args.use_ema, args.checkpoint)
    num_classes = args.num_classes
    if num_classes is None:
        num_classes = state_dict[CLASSIFIER_WEIGHT].shape[0] if CLASSIFIER_WEIGHT in state_dict else 1000
    if len(classes) > num_classes:
        raise ValueError(f"{os.path.join(args.data_dir, args.split)!r} has {len(classes)} classes but the model "
                         f"predicts {num_classes}")
    model = timm.create_model(args.model, num_classes=num_classes)
    load_encoder_checkpoint(model, state_dict, strict=True)
    model.to(device).eval()

    overrides = {"crop_pct": args.crop_pct, "interpolation": args.interpolation,
                 "input_size": (3, args.img_size, args.img_size) if args.img_size else None}
    data_config = resolve_data_config({k: v for k, v in overrides.items() if v is not None}, model=model)
    loader = create_eval_loader(args.data_dir, args.split, data_config, args.batch_size, args.workers, device)

    start = time.perf_counter()
    metrics = evaluate(model, loader, device, getattr(torch, args.amp_dtype) if args.amp else None,
                       progress=args.progress)
    results = {
        "model": args.model, "checkpoint": args.checkpoint, "use_ema": args.use_ema,
        "top1": round(metrics["top1"], 4), "top5": round(metrics["top5"], 4), "loss": round(metrics["loss"], 6),
        "num_images": len(loader.dataset), "num_classes": num_classes, "img_size": data_config["input_size"][-1],
        "crop_pct": data_config["crop_pct"], "interpolation": data_config["interpolation"],
        "seconds": round(time.perf_counter() - start, 2),
    }
    print(f"{args.model}{' (EMA)' if args.use_ema else ''}: top-1 {results['top1']:.3f}  "
          f"top-5 {results['top5']:.3f}  loss {results['loss']:.4f}  ({results['num_images']} images, "
          f"{results['img_size']} px, crop_pct {results['crop_pct']}, {results['interpolation']})")
    print(json.dumps(results, indent=2))
    if args.results_file:
        os.makedirs(os.path.dirname(os.path.abspath(args.results_file)), exist_ok=True)
        with open(args.results_file, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError, CheckpointError) as e:
        sys.exit(f"error: {e}")
