"""Every shipped config builds its segmentor and pipelines; parameter counts follow docs/model.md §5.4."""
from __future__ import annotations

import pytest
import torch
from segmentation_testing import CONFIGS
from mmcv.utils import Config

import segman_mmseg  # noqa: F401
from mmseg.datasets.pipelines import Compose
from mmseg.models import build_segmentor

ALL = sorted(p.relative_to(CONFIGS).as_posix() for p in (CONFIGS / "segman").glob("*/*.py"))
# docs/model.md §5.4 (segmentor totals) and §8.1 (classes, test mode)
EXPECTED = {
    "segman/tiny/segman_t_ade.py": (6_397_260, 150, "whole"),
    "segman/small/segman_s_ade.py": (29_424_636, 150, "whole"),
    "segman/base/segman_b_ade.py": (51_802_820, 150, "whole"),
    "segman/large/segman_l_ade.py": (92_335_734, 150, "whole"),
    "segman/tiny/segman_t_cityscapes.py": (6_380_361, 19, "slide"),
    "segman/small/segman_s_cityscapes.py": (29_974_153, 19, "slide"),
    "segman/base/segman_b_cityscapes.py": (51_779_109, 19, "slide"),
    "segman/large/segman_l_cityscapes.py": (92_306_259, 19, "whole"),
    "segman/large/segman_l2_cityscapes.py": (92_358_847, 19, "whole"),
    "segman/tiny/segman_t_coco.py": (6_399_969, 171, "whole"),
    "segman/small/segman_s_coco.py": (29_427_681, 171, "whole"),
    "segman/base/segman_b_coco.py": (51_806_621, 171, "whole"),
    "segman/large/segman_l_coco.py": (92_340_459, 171, "whole"),
}


def test_every_dataset_size_pair_is_shipped():
    assert set(EXPECTED) <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_config_builds_model_and_pipelines(name):
    cfg = Config.fromfile(str(CONFIGS / name))
    cfg.model.backbone.pretrained = None
    with torch.device("meta"):
        model = build_segmentor(cfg.model, train_cfg=cfg.get("train_cfg"), test_cfg=cfg.get("test_cfg"))
    Compose(cfg.data.test.pipeline)
    train = cfg.data.train.get("dataset", cfg.data.train)
    Compose(train.pipeline)
    if name in EXPECTED:
        params, classes, mode = EXPECTED[name]
        assert sum(p.numel() for p in model.parameters()) == params
        assert cfg.model.decode_head.num_classes == classes
        assert cfg.model.test_cfg.mode == mode


def test_original_head_name_builds_the_same_head():
    """``type='MMSCDecoder'`` (the original configs' spelling) builds ``SegMANDecoder`` with the same keys."""
    from segman_mmseg.decode_head import SegMANDecoder

    cfg = Config.fromfile(str(CONFIGS / "segman/tiny/segman_t_ade.py"))
    cfg.model.backbone.pretrained = None
    with torch.device("meta"):
        ours = build_segmentor(cfg.model)
        cfg.model.decode_head.type = "MMSCDecoder"
        original = build_segmentor(cfg.model)
    assert type(original.decode_head) is SegMANDecoder
    assert list(original.state_dict()) == list(ours.state_dict())


@pytest.mark.parametrize("name,batch", [("segman/base/segman_b_ade.py", (4, 4, 0.25)),
                                         ("segman/small/segman_s_cityscapes.py", (2, 2, 0.2)),
                                         ("segman/tiny/segman_t_coco.py", (4, 4, 0.0))])
def test_recipe_values(name, batch):
    """docs/model.md §8.1: optimizer, schedule, batch and drop path."""
    cfg = Config.fromfile(str(CONFIGS / name))
    assert (cfg.data.samples_per_gpu, cfg.data.workers_per_gpu, cfg.model.backbone.drop_path_rate) == batch
    assert cfg.optimizer.type == "AdamW" and cfg.optimizer.lr == 6e-5 and cfg.optimizer.weight_decay == 0.01
    assert cfg.optimizer.paramwise_cfg.custom_keys["head"] == dict(lr_mult=10.0)
    assert cfg.optimizer.paramwise_cfg.custom_keys["norm"] == dict(decay_mult=0.0)
    assert (cfg.lr_config.policy, cfg.lr_config.power, cfg.lr_config.warmup_iters) == ("poly", 1.0, 1500)
    assert cfg.runner.max_iters == 160000 and cfg.checkpoint_config.interval == 4000
    assert cfg.custom_imports.imports == ["segman_mmseg"]


def test_paramwise_groups_follow_mmcv_first_match():
    """'head' (lr x10) wins over 'norm' for decoder norms; backbone norms get no weight decay."""
    from mmcv.runner import build_optimizer

    cfg = Config.fromfile(str(CONFIGS / "segman/tiny/segman_t_ade.py"))
    cfg.model.backbone.pretrained = None
    cfg.model.decode_head.norm_cfg = dict(type="BN", requires_grad=True)
    model = build_segmentor(cfg.model)
    optimizer = build_optimizer(model, cfg.optimizer)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {names[id(g["params"][0])]: g for g in optimizer.param_groups}
    assert groups["backbone.layers.0.blocks.0.norm1.weight"]["weight_decay"] == 0.0
    assert groups["backbone.layers.0.blocks.0.norm1.weight"]["lr"] == pytest.approx(6e-5)
    assert groups["decode_head.vssm.norm1.weight"]["lr"] == pytest.approx(6e-4)
    assert groups["decode_head.vssm.norm1.weight"]["weight_decay"] == pytest.approx(0.01)
    assert groups["backbone.layers.0.blocks.0.token_mixer.rpb.0"]["weight_decay"] == pytest.approx(0.01)
