"""The per-variant ImageNet recipe (docs/model.md §8.2) and how train.py applies it."""
from __future__ import annotations

import pytest
import timm
import torch

from classification_testing import load_script
from recipes import COMMON, RECIPES, scaled_lr

train = load_script("train")


@pytest.mark.parametrize("model, batch, drop_path, amp, lr", [
    ("SegMANEncoder_t", 512, 0.0, False, 4e-3),
    ("SegMANEncoder_s", 256, 0.15, True, 2e-3),
    ("SegMANEncoder_b", 256, 0.3, True, 2e-3),
    ("SegMANEncoder_l", 256, 0.3, True, 2e-3),
])
def test_variant_defaults(model, batch, drop_path, amp, lr):
    args = train.parse_args(["--data-dir", "x", "--model", model])
    note = train.apply_recipe(args)
    assert (args.batch_size, args.drop_path, args.amp) == (batch, drop_path, amp)
    assert scaled_lr(args.batch_size, RECIPES[model].gpus) == pytest.approx(lr)
    assert args.experiment == f"{model}-224"
    assert (note is None) == (model != "SegMANEncoder_l")  # L has no original script and says so


def test_crop_pct_matches_the_timm_config():
    for name, recipe in RECIPES.items():
        assert timm.models.get_pretrained_cfg(name).crop_pct == recipe.crop_pct
        assert timm.models.get_pretrained_cfg(name).interpolation == "bicubic"


def test_shared_defaults_and_overrides():
    args = train.parse_args(["--data-dir", "x", "--model", "SegMANEncoder_s", "--no-amp", "-b", "64", "--drop-path",
                             "0.1"])
    train.apply_recipe(args)
    assert (args.batch_size, args.drop_path, args.amp, args.cuda_graph) == (64, 0.1, False, False)
    assert train.parse_args(["--data-dir", "x", "--cuda-graph"]).cuda_graph
    assert (args.epochs, args.cooldown_epochs, args.warmup_epochs) == (300, 10, 5)
    assert (args.warmup_lr, args.min_lr, args.weight_decay, args.clip_grad) == (1e-6, 1e-5, 0.05, 5.0)
    mixup = (args.mixup, args.cutmix, args.mixup_prob, args.mixup_switch_prob, args.mixup_mode, args.smoothing)
    assert mixup == (0.8, 1.0, 1.0, 0.5, "batch", 0.1)
    assert (args.aa, args.reprob, args.remode, args.train_interpolation) == ("rand-m9-mstd0.5-inc1", 0.25, "pixel",
                                                                            "random")
    assert args.model_ema_decay == 0.99984 and args.sync_bn and args.dist_bn == "reduce"
    assert COMMON["epochs"] + COMMON["cooldown_epochs"] == 310


def test_weight_decay_follows_timms_rule():
    """No decay for 1-d parameters and biases; RPB tables, A_logs and LayerScale are decayed (docs/model.md §8.2)."""
    model = timm.create_model("SegMANEncoder_t")
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        expected = 0.0 if p.ndim <= 1 or name.endswith(".bias") else 0.05
        assert decay_of[id(p)] == expected, name
    decayed = [n for n, p in model.named_parameters() if decay_of[id(p)] and ("rpb" in n or "A_logs" in n)]
    assert decayed


def test_schedule_is_310_epochs_with_warmup_and_cooldown():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)
    scheduler, epochs = timm.scheduler.create_scheduler_v2(optimizer, num_epochs=300, cooldown_epochs=10,
                                                           warmup_epochs=5, warmup_lr=1e-6, min_lr=1e-5)
    assert epochs == 310
    lrs = [scheduler._get_lr(e)[0] for e in (0, 5, 300, 309)]
    assert lrs[0] == pytest.approx(1e-6) and lrs[1] == pytest.approx(2e-3, rel=1e-3)
    assert lrs[2] == pytest.approx(1e-5) and lrs[3] == pytest.approx(1e-5)
