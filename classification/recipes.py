"""The ImageNet-1k pretraining recipe of the SegMAN encoders, as data (docs/model.md §8.2).

One table row per variant; what all variants share lives in ``COMMON`` (these are also the
command-line defaults of ``train.py``).  The original shipped scripts for T, S and B only; the L
row is our choice (marked ``original=False``) and says so wherever it is used.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Recipe", "RECIPES", "COMMON", "resolve_recipe", "scaled_lr"]


@dataclass(frozen=True)
class Recipe:
    """Per-variant settings.

    Args:
        model: the timm name.
        gpus: GPUs of the original run (the scripts' default).
        batch_size: images per GPU.
        drop_path: stochastic depth rate (linear over the blocks).
        amp: native AMP (fp16) or fp32.
        crop_pct: evaluation centre-crop fraction (also in the model's timm ``pretrained_cfg``).
        original: False where the original has no script and the values are ours.
    """
    model: str
    gpus: int
    batch_size: int
    drop_path: float
    amp: bool
    crop_pct: float
    original: bool = True


RECIPES: dict[str, Recipe] = {r.model: r for r in (
    Recipe("SegMANEncoder_t", gpus=8, batch_size=512, drop_path=0.0, amp=False, crop_pct=0.9),
    Recipe("SegMANEncoder_s", gpus=8, batch_size=256, drop_path=0.15, amp=True, crop_pct=0.9),
    Recipe("SegMANEncoder_b", gpus=8, batch_size=256, drop_path=0.3, amp=True, crop_pct=0.95),
    # No original script for L (docs/model.md §10.3): B's batch, drop-path and precision.
    Recipe("SegMANEncoder_l", gpus=8, batch_size=256, drop_path=0.3, amp=True, crop_pct=0.95, original=False),
)}

# Shared by every variant (timm 0.6.12 train.py defaults plus the scripts' flags).
COMMON = dict(
    epochs=300, cooldown_epochs=10, warmup_epochs=5, warmup_lr=1e-6, min_lr=1e-5, sched="cosine",
    lr_base=1e-3, lr_base_size=1024,                      # lr = lr_base · (batch · world) / lr_base_size
    opt="adamw", opt_eps=1e-8, opt_betas=(0.9, 0.999), weight_decay=0.05, clip_grad=5.0,
    model_ema_decay=0.99984,
    mixup=0.8, cutmix=1.0, mixup_prob=1.0, mixup_switch_prob=0.5, mixup_mode="batch", smoothing=0.1,
    aa="rand-m9-mstd0.5-inc1", reprob=0.25, remode="pixel", recount=1,
    scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5, train_interpolation="random",
    input_size=224, seed=42,
)


def resolve_recipe(model: str) -> Recipe:
    """The recipe of a timm model name.

    Raises:
        ValueError: not a SegMAN encoder; the message lists the names.
    """
    if model not in RECIPES:
        close = [name for name in RECIPES if name.lower() == model.lower()]
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"unknown model {model!r}{hint}; choose one of {', '.join(RECIPES)}")
    return RECIPES[model]


def scaled_lr(batch_size: int, world_size: int, lr_base: float = COMMON["lr_base"],
              lr_base_size: int = COMMON["lr_base_size"]) -> float:
    """The original ``--auto-lr`` rule: ``lr_base · batch_size · world_size / lr_base_size``.

    >>> scaled_lr(512, 8), scaled_lr(256, 8)
    (0.004, 0.002)
    """
    return lr_base * batch_size * world_size / lr_base_size
