"""ImageNet-1k pretraining of the SegMAN encoders with timm (recipe: docs/model.md §8.2).

    torchrun --nproc_per_node 8 classification/train.py --data-dir /data/imagenet --model SegMANEncoder_s
    bash scripts/train_segman-s.sh 8 /data/imagenet        # the same, as the original script ran it

``--model`` picks the variant's recipe (``recipes.py``): batch per GPU, drop-path, AMP; everything
else is shared: 300 + 10 cooldown epochs, 5 warmup epochs from 1e-6, cosine to 1e-5, AdamW with
lr = 1e-3 · total batch / 1024 and weight decay 0.05 (none for 1-d params and biases), gradient
norm clipped at 5, Mixup 0.8 / CutMix 1.0 with label smoothing 0.1, RandAugment
rand-m9-mstd0.5-inc1, random erasing 0.25, EMA of the weights (decay 0.99984 per step).  Any flag
overrides its default.

The pieces are timm's: ``create_dataset``/``create_loader`` (augmentation, random erasing and
normalisation on the device), ``FastCollateMixup``, ``SoftTargetCrossEntropy``,
``create_optimizer_v2``, ``create_scheduler_v2``, ``ModelEmaV3``, ``NativeScaler``,
``distribute_bn`` and ``CheckpointSaver``.  Distributed runs (torchrun) convert BatchNorm to SyncBN,
create the EMA after that and before DDP, and average the BN statistics over the ranks before
each evaluation.  The model and its EMA are evaluated every epoch.

Output, in ``--output/<model>-<input size>/``:

* ``checkpoints/{checkpoint-E, last, model_best}.pth.tar``: ranked by top-1 of the model;
* ``checkpoints_ema/{checkpoint-ema-E, last, model_best}.pth.tar``: ranked by top-1 of the EMA;
* ``summary.csv``, ``args.json`` and TensorBoard events in ``tensorboard/``.

Every checkpoint holds ``state_dict`` and ``state_dict_ema`` without ``module.`` prefixes (plus
``epoch``, ``arch``, ``optimizer``, ``amp_scaler`` with fp16 AMP, ``args``, ``version``, ``metric``):
``segman.models.load_encoder_checkpoint`` and the segmentation backbones (``pretrained=``) load it
as it is and take ``state_dict_ema``.  ``--resume`` continues from one (from the newest readable
checkpoint beside it if that file is damaged).  Files are written atomically (temporary file, fsync,
rename), and a non-finite loss stops training before anything of that epoch is saved.

Each epoch seeds ``random``, ``numpy`` and ``torch`` from ``(--seed, epoch, rank)`` before its data
loader starts (its workers are started anew each epoch and take their seeds from there), so the
data order, augmentations, Mixup/CutMix and drop-path of an epoch do not depend on what ran before
it: a run resumed at an epoch boundary continues as the uninterrupted run would have.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, Optional, Sequence

import numpy as np
import timm
import torch
import torch.distributed as dist
from timm.data import FastCollateMixup, create_dataset, create_loader, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import clean_state_dict
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import (CheckpointSaver, ModelEmaV3, NativeScaler, dispatch_clip_grad, distribute_bn,
                        init_distributed_device, random_seed, unwrap_model, update_summary)
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import segman.models  # noqa: F401  (registers SegMANEncoder_{t,s,b,l} with timm)
from segman.models import COMPILE_MODES, CheckpointError, compile_regions, load_checkpoint_file
from segman.models.checkpoint import atomic_path, checkpoints_newest_first, newest_loadable
from segman.models.cuda_graph import leave_to_graphs, release_graphs

import timm_compat
from imagefolder import check_image_folder, create_eval_loader
from recipes import COMMON, resolve_recipe, scaled_lr
from validate import evaluate

timm_compat.apply()  # before any loader is built: its RandAugment ops take the patched functions

__all__ = ["parse_args", "resume_checkpoint", "seed_epoch", "main"]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command line; the variant's defaults (None below) are filled in by :func:`apply_recipe`."""
    c = COMMON
    parser = argparse.ArgumentParser(description="ImageNet pretraining of a SegMAN encoder",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    group = parser.add_argument_group("data")
    group.add_argument("--data-dir", required=True, help="ImageFolder root with train/ and val/ class folders")
    group.add_argument("--train-split", default="train")
    group.add_argument("--val-split", default="val")
    group.add_argument("--num-classes", type=int, default=1000, help="classifier size (≥ the number of classes)")
    group.add_argument("--input-size", type=int, default=c["input_size"], help="training and evaluation size")
    group.add_argument("--workers", "-j", type=int, default=8, help="data loading processes per GPU")

    group = parser.add_argument_group("model")
    group.add_argument("--model", default="SegMANEncoder_t", help="timm name: SegMANEncoder_{t,s,b,l}")
    group.add_argument("--drop-path", type=float, default=None, help="stochastic depth (default: the variant's)")
    group.add_argument("--grad-checkpointing", action="store_true", help="recompute blocks in backward")
    group.add_argument("--cuda-graph", action="store_true",
                       help="replay the model's training forward and backward from CUDA graphs (fixed batch shape)")
    group.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE", choices=COMPILE_MODES,
                       help="torch.compile the model's blocks (segman.models.compile_regions) with this "
                            "torch.compile mode (default: 'default'): faster GPU steps after a first step that compiles")

    group = parser.add_argument_group("optimisation")
    group.add_argument("--batch-size", "-b", type=int, default=None, help="images per GPU (default: the variant's)")
    group.add_argument("--lr", type=float, default=None,
                       help="peak learning rate (default: lr-base · batch-size · GPUs / lr-base-size)")
    group.add_argument("--lr-base", type=float, default=c["lr_base"])
    group.add_argument("--lr-base-size", type=int, default=c["lr_base_size"])
    group.add_argument("--opt", default=c["opt"])
    group.add_argument("--opt-eps", type=float, default=c["opt_eps"])
    group.add_argument("--opt-betas", type=float, nargs=2, default=c["opt_betas"])
    group.add_argument("--weight-decay", type=float, default=c["weight_decay"])
    group.add_argument("--clip-grad", type=float, default=c["clip_grad"], help="gradient norm limit (0: off)")
    group.add_argument("--sched", default=c["sched"])
    group.add_argument("--epochs", type=int, default=c["epochs"], help="schedule length before the cooldown")
    group.add_argument("--cooldown-epochs", type=int, default=c["cooldown_epochs"], help="epochs at min-lr at the end")
    group.add_argument("--warmup-epochs", type=int, default=c["warmup_epochs"])
    group.add_argument("--warmup-lr", type=float, default=c["warmup_lr"])
    group.add_argument("--min-lr", type=float, default=c["min_lr"])

    group = parser.add_argument_group("augmentation and regularisation")
    group.add_argument("--mixup", type=float, default=c["mixup"], help="Mixup alpha (0: off)")
    group.add_argument("--cutmix", type=float, default=c["cutmix"], help="CutMix alpha (0: off)")
    group.add_argument("--mixup-prob", type=float, default=c["mixup_prob"])
    group.add_argument("--mixup-switch-prob", type=float, default=c["mixup_switch_prob"])
    group.add_argument("--mixup-mode", default=c["mixup_mode"], choices=("batch", "pair", "elem"))
    group.add_argument("--smoothing", type=float, default=c["smoothing"], help="label smoothing")
    group.add_argument("--aa", default=c["aa"], help="timm auto-augment policy ('' for none)")
    group.add_argument("--reprob", type=float, default=c["reprob"], help="random erasing probability")
    group.add_argument("--remode", default=c["remode"])
    group.add_argument("--recount", type=int, default=c["recount"])
    group.add_argument("--scale", type=float, nargs=2, default=c["scale"], help="RandomResizedCrop area range")
    group.add_argument("--ratio", type=float, nargs=2, default=c["ratio"], help="RandomResizedCrop aspect range")
    group.add_argument("--hflip", type=float, default=c["hflip"])
    group.add_argument("--train-interpolation", default=c["train_interpolation"])
    group.add_argument("--model-ema", action=argparse.BooleanOptionalAction, default=True, help="keep an EMA")
    group.add_argument("--model-ema-decay", type=float, default=c["model_ema_decay"])

    group = parser.add_argument_group("runtime")
    group.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                       help="mixed precision (default: the variant's; fp32 for T)")
    group.add_argument("--amp-dtype", default="float16", choices=("float16", "bfloat16"))
    group.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=True,
                       help="SyncBN in distributed GPU runs")
    group.add_argument("--dist-bn", default="reduce", choices=("reduce", "broadcast", ""),
                       help="share BN statistics across ranks before evaluating")
    group.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    group.add_argument("--seed", type=int, default=c["seed"],
                       help="non-negative seed; each epoch is seeded from (seed, epoch, rank)")
    group.add_argument("--output", default="output", help="parent of the experiment folder")
    group.add_argument("--experiment", default=None, help="experiment folder name (default: <model>-<input size>)")
    group.add_argument("--resume", default="", help="training checkpoint to continue from")
    group.add_argument("--checkpoint-hist", type=int, default=10, help="numbered checkpoints to keep")
    group.add_argument("--log-interval", type=int, default=50, help="steps between progress-bar updates")
    group.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm bars on rank 0")
    return parser.parse_args(argv)


def apply_recipe(args: argparse.Namespace) -> Optional[str]:
    """Fill the variant-dependent defaults; returns a note when the recipe is not the original's."""
    recipe = resolve_recipe(args.model)
    for key in ("drop_path", "batch_size", "amp"):
        if getattr(args, key) is None:
            setattr(args, key, getattr(recipe, key))
    if args.experiment is None:
        args.experiment = f"{args.model}-{args.input_size}"
    if not recipe.original:
        return (f"note: the original has no ImageNet script for {args.model}; its defaults here (batch "
                f"{recipe.batch_size}/GPU, drop-path {recipe.drop_path}, AMP) are ours, copied from SegMAN-B")
    return None


class AtomicCheckpointSaver(CheckpointSaver):
    """timm's ``CheckpointSaver`` writing every file through ``atomic_path`` (temporary file, fsync,
    rename) and replacing ``last`` in one rename, so a kill never leaves a partial or missing file."""

    def _save(self, save_path, epoch, metric=None):
        with atomic_path(save_path) as tmp:
            super()._save(tmp, epoch, metric)

    def _replace(self, src, dst):
        os.replace(src, dst)


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed ``random``, ``numpy.random`` and ``torch`` (CPU and CUDA) from ``(seed, epoch, rank)``."""
    random_seed(int(np.random.SeedSequence((seed, epoch, rank)).generate_state(1)[0]), 0)


def resume_checkpoint(path: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                      loss_scaler: Optional[NativeScaler], model_ema: Optional[ModelEmaV3], arch: str) -> int:
    """Restore model, optimizer, EMA and AMP scaler from a ``train.py`` checkpoint.

    Returns:
        The epoch to start at (the one after the checkpoint's).  The timm scheduler holds no
        state besides the epoch; the caller steps it there.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume checkpoint {path!r} not found")
    try:
        checkpoint = load_checkpoint_file(path)
    except CheckpointError as e:  # e.g. a run killed while writing it: the newest readable neighbour
        saved = checkpoints_newest_first(os.path.dirname(path) or ".", "last.pth.tar",
                                         r"checkpoint(?:-ema)?-(\d+)\.pth\.tar")
        fallback = newest_loadable([p for p in saved if os.path.realpath(p) != os.path.realpath(path)])
        if fallback is None:
            raise
        print(f"warning: {e}\nresuming from {fallback!r} instead, the newest readable checkpoint beside it",
              file=sys.stderr)
        checkpoint = load_checkpoint_file(fallback)
    needed = ("epoch", "state_dict", "optimizer")
    if not isinstance(checkpoint, Mapping) or any(k not in checkpoint for k in needed):
        raise CheckpointError(f"{path!r} is not a training checkpoint (it needs {', '.join(needed)}); "
                              f"weights alone cannot resume a run")
    if checkpoint.get("arch", arch) != arch:
        raise ValueError(f"{path!r} is a {checkpoint['arch']} checkpoint, not {arch}; "
                         f"pass --model {checkpoint['arch']}")
    model.load_state_dict(clean_state_dict(checkpoint["state_dict"]))
    optimizer.load_state_dict(checkpoint["optimizer"])
    if model_ema is not None:
        if "state_dict_ema" in checkpoint:
            model_ema.module.load_state_dict(clean_state_dict(checkpoint["state_dict_ema"]))
        else:
            print(f"warning: {path!r} has no state_dict_ema; the EMA restarts from the model weights")
            model_ema.set(model)
    if loss_scaler is not None and loss_scaler.state_dict_key in checkpoint:
        loss_scaler.load_state_dict(checkpoint[loss_scaler.state_dict_key])
    return int(checkpoint["epoch"]) + 1  # version 2: 'epoch' is the last completed one


def train_one_epoch(epoch: int, model: nn.Module, loader: Any, optimizer: torch.optim.Optimizer, loss_fn: nn.Module,
                    lr_scheduler: Any, num_updates: int, args: argparse.Namespace, device: torch.device,
                    amp_dtype: Optional[torch.dtype], loss_scaler: Optional[NativeScaler],
                    model_ema: Optional[ModelEmaV3]) -> tuple[dict[str, float], int]:
    """One pass over the training set; returns ``{loss, images_per_s}`` and the update count."""
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    first_bad = torch.full((), -1, dtype=torch.long, device=device)  # first step with a non-finite loss
    seen = 0
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not (args.primary and args.progress), dynamic_ncols=True)
    start = time.perf_counter()
    for step, (images, targets) in enumerate(bar):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = loss_fn(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        if loss_scaler is not None:  # fp16: scaled backward, unscale, clip, step, update the scale
            loss_scaler(loss, optimizer, clip_grad=args.clip_grad or None, parameters=model.parameters())
        else:
            loss.backward()
            if args.clip_grad:
                dispatch_clip_grad(model.parameters(), args.clip_grad, mode="norm")
            optimizer.step()
        if model_ema is not None:
            model_ema.update(model)
        num_updates += 1
        lr_scheduler.step_update(num_updates=num_updates)
        loss_sum += loss.detach().double() * images.size(0)
        seen += images.size(0)
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), step, first_bad)
        if step % args.log_interval == 0 or step == len(loader) - 1:
            if first_bad.item() >= 0:  # checked when the loss is read anyway: no extra synchronisation
                raise FloatingPointError(
                    f"training stopped in epoch {epoch}: the loss is not finite since step {first_bad.item()} of "
                    f"{len(loader)} (now {loss.item()}); nothing of this epoch was saved.  Lower the learning rate "
                    f"(--lr / --lr-base), clip gradients (--clip-grad), or use --amp-dtype bfloat16 instead of float16")
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{optimizer.param_groups[0]['lr']:.3g}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    if args.distributed:
        dist.all_reduce(loss_sum)
    total = seen * args.world_size
    return {"loss": loss_sum.item() / max(total, 1), "images_per_s": total / elapsed}, num_updates


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Train; returns the best top-1 of the model and of the EMA with their epochs."""
    args = parse_args(argv)
    recipe_note = apply_recipe(args)  # unknown model names fail here, listing the SegMAN names
    classes = check_image_folder(args.data_dir, (args.train_split, args.val_split))
    if len(classes) > args.num_classes:
        raise ValueError(f"{args.data_dir!r} has {len(classes)} classes, more than --num-classes {args.num_classes}")
    if args.seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {args.seed}")
    if (args.mixup > 0 or args.cutmix > 0) and args.batch_size % 2:
        raise ValueError(f"Mixup/CutMix need an even batch per process, got --batch-size {args.batch_size} "
                         f"(or turn them off with --mixup 0 --cutmix 0)")

    device = init_distributed_device(args)  # sets args.distributed, world_size, rank, local_rank, device
    args.primary = args.rank == 0
    log = print if args.primary else (lambda *a, **k: None)
    if args.lr is None:
        args.lr = scaled_lr(args.batch_size, args.world_size, args.lr_base, args.lr_base_size)
    amp_dtype = getattr(torch, args.amp_dtype) if args.amp else None
    random_seed(args.seed, args.rank)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    if args.cuda_graph and device.type != "cuda":
        log(f"warning: --cuda-graph needs a GPU; training on {device.type} runs eagerly")
    model = timm.create_model(args.model, num_classes=args.num_classes, drop_path_rate=args.drop_path,
                              cuda_graph=args.cuda_graph)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(device)
    if args.distributed and args.sync_bn:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            log("warning: SyncBN needs GPUs; BatchNorm stays per process on the CPU")
    if args.compile:
        compile_regions(model, mode=args.compile)
    optimizer = create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                    eps=args.opt_eps, betas=tuple(args.opt_betas))
    loss_scaler = NativeScaler(device=device.type) if amp_dtype == torch.float16 else None
    model_ema = ModelEmaV3(model, decay=args.model_ema_decay) if args.model_ema else None  # after SyncBN, before DDP
    start_epoch = 0
    if args.resume:
        start_epoch = resume_checkpoint(args.resume, model, optimizer, loss_scaler, model_ema, args.model)
    # with --cuda-graph the graphs average the gradients; DDP only wraps what is not graphed (here: nothing)
    if args.distributed and len(leave_to_graphs(model)) < sum(p.requires_grad for p in model.parameters()):
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, cooldown_epochs=args.cooldown_epochs,
        warmup_epochs=args.warmup_epochs, warmup_lr=args.warmup_lr, min_lr=args.min_lr)
    if start_epoch > 0:
        lr_scheduler.step(start_epoch)

    # Data: training transforms and random erasing from timm; Mixup/CutMix while collating.
    data_config = resolve_data_config({"input_size": (3, args.input_size, args.input_size)},
                                      model=unwrap_model(model))
    mixup = None
    if args.mixup > 0 or args.cutmix > 0:
        mixup = FastCollateMixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                                 switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                                 label_smoothing=args.smoothing, num_classes=args.num_classes)
    train_loader = create_loader(
        create_dataset("", root=args.data_dir, split=args.train_split, is_training=True),
        input_size=data_config["input_size"], batch_size=args.batch_size, is_training=True,
        scale=tuple(args.scale), ratio=tuple(args.ratio), hflip=args.hflip, auto_augment=args.aa or None,
        interpolation=args.train_interpolation, re_prob=args.reprob, re_mode=args.remode, re_count=args.recount,
        mean=data_config["mean"], std=data_config["std"], num_workers=args.workers, distributed=args.distributed,
        collate_fn=mixup, pin_memory=device.type == "cuda", device=device, use_prefetcher=True,
        persistent_workers=False)  # workers seeded anew each epoch by seed_epoch: resumable at any epoch
    if len(train_loader) == 0:
        raise ValueError(f"{len(train_loader.dataset)} training images are fewer than one batch "
                         f"({args.batch_size} per process × {args.world_size}); lower --batch-size")
    eval_loader = create_eval_loader(args.data_dir, args.val_split, data_config, args.batch_size, args.workers,
                                     device, distributed=args.distributed)
    if mixup is not None:
        train_loss = SoftTargetCrossEntropy()  # label smoothing is folded into the mixed targets
    elif args.smoothing:
        train_loss = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        train_loss = nn.CrossEntropyLoss()

    output_dir = os.path.join(args.output, args.experiment)
    savers, writer = {}, None
    if args.primary:
        for name, prefix in (("checkpoints", "checkpoint"), ("checkpoints_ema", "checkpoint-ema")):
            if name == "checkpoints_ema" and model_ema is None:
                continue
            os.makedirs(os.path.join(output_dir, name), exist_ok=True)
            savers[name] = AtomicCheckpointSaver(
                model, optimizer, args=args, model_ema=model_ema, amp_scaler=loss_scaler, checkpoint_prefix=prefix,
                checkpoint_dir=os.path.join(output_dir, name), max_history=args.checkpoint_hist)
            last = os.path.join(output_dir, name, "last.pth.tar")
            if args.resume and os.path.isfile(last):  # continue the ranking of a run resumed in place
                savers[name].load_state_dict_from_checkpoint(last)
        with open(os.path.join(output_dir, "args.json"), "w") as f:
            json.dump(vars(args), f, indent=2)
        from torch.utils.tensorboard import SummaryWriter  # lazy: only rank 0 writes
        writer = SummaryWriter(os.path.join(output_dir, "tensorboard"))

    params = sum(p.numel() for p in model.parameters())
    total_batch = args.batch_size * args.world_size
    log(f"{args.model}: {params / 1e6:.2f}M params, {len(classes)} classes, {len(train_loader.dataset)} train / "
        f"{len(eval_loader.dataset)} val images, {args.world_size} process(es) × {args.batch_size} = {total_batch} "
        f"per step, lr {args.lr:.3g}, drop-path {args.drop_path}, "
        f"{'AMP ' + args.amp_dtype if amp_dtype else 'fp32'}, {num_epochs} epochs (with cooldown) on {device}; "
        f"output {output_dir}")
    if recipe_note:
        log(recipe_note)
    if start_epoch:
        log(f"resumed from {args.resume!r}: starting at epoch {start_epoch}"
            + (f"; the schedule ends at epoch {num_epochs - 1}, nothing left to train" if start_epoch >= num_epochs
               else ""))

    best = {"top1": -math.inf, "epoch": None, "top1_ema": -math.inf, "epoch_ema": None}
    num_updates = start_epoch * len(train_loader)
    for epoch in range(start_epoch, num_epochs):
        seed_epoch(args.seed, epoch, args.rank)
        if args.distributed:
            train_loader.sampler.set_epoch(epoch)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_metrics, num_updates = train_one_epoch(epoch, model, train_loader, optimizer, train_loss, lr_scheduler,
                                                     num_updates, args, device, amp_dtype, loss_scaler, model_ema)
        if args.distributed and args.dist_bn:
            distribute_bn(model, args.world_size, args.dist_bn == "reduce")
        eval_metrics = evaluate(model, eval_loader, device, amp_dtype, args.distributed, args.primary and args.progress)
        ema_metrics = None
        if model_ema is not None:
            if args.distributed and args.dist_bn:
                distribute_bn(model_ema, args.world_size, args.dist_bn == "reduce")
            ema_metrics = evaluate(model_ema.module, eval_loader, device, amp_dtype, args.distributed,
                                   args.primary and args.progress, desc="val (EMA)")
        lr_scheduler.step(epoch + 1, eval_metrics["top1"])
        peak_gib = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None

        if eval_metrics["top1"] > best["top1"]:
            best.update(top1=eval_metrics["top1"], epoch=epoch)
        if ema_metrics and ema_metrics["top1"] > best["top1_ema"]:
            best.update(top1_ema=ema_metrics["top1"], epoch_ema=epoch)
        if not args.primary:
            continue
        ema_text = f" | EMA top-1 {ema_metrics['top1']:.2f} top-5 {ema_metrics['top5']:.2f}" if ema_metrics else ""
        memory_text = f", peak memory {peak_gib:.2f} GiB" if peak_gib is not None else ""
        log(f"epoch {epoch}/{num_epochs - 1}: lr {lr:.3g}, train loss {train_metrics['loss']:.4f} | top-1 "
            f"{eval_metrics['top1']:.2f} top-5 {eval_metrics['top5']:.2f} loss {eval_metrics['loss']:.4f}{ema_text} | "
            f"{train_metrics['images_per_s']:.1f} images/s{memory_text}, {time.perf_counter() - start:.1f} s")
        scalars = {"train/lr": lr, **{f"train/{k}": v for k, v in train_metrics.items()},
                   **{f"val/{k}": v for k, v in eval_metrics.items()},
                   **{f"val_ema/{k}": v for k, v in (ema_metrics or {}).items()}}
        if peak_gib is not None:
            scalars["train/peak_memory_gib"] = peak_gib
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, epoch)
        writer.flush()
        ema_columns = {f"ema_{k}": v for k, v in (ema_metrics or {}).items()}
        update_summary(epoch, train_metrics, {**eval_metrics, **ema_columns}, os.path.join(output_dir, "summary.csv"),
                       lr=lr)
        savers["checkpoints"].save_checkpoint(epoch, metric=eval_metrics["top1"])
        if "checkpoints_ema" in savers:
            savers["checkpoints_ema"].save_checkpoint(epoch, metric=ema_metrics["top1"])

    if writer is not None:
        writer.close()
    if best["epoch"] is not None:
        log(f"best top-1 {best['top1']:.2f} (epoch {best['epoch']})"
            + (f", EMA {best['top1_ema']:.2f} (epoch {best['epoch_ema']})" if best["epoch_ema"] is not None else ""))
    release_graphs(model)  # before the process group goes: graphs may hold SyncBN's NCCL calls
    if args.distributed:
        dist.destroy_process_group()
    return {**best, "output_dir": output_dir, "start_epoch": start_epoch, "num_epochs": num_epochs}


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError, CheckpointError, FloatingPointError) as e:
        sys.exit(f"error: {e}")
