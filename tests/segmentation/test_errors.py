"""Clear errors for the mistakes users make with configs, data and checkpoints."""
from __future__ import annotations

import logging

import pytest
from segmentation_testing import CONFIGS
from mmcv.utils import Config

import segman_mmseg  # noqa: F401
from mmseg.models import build_segmentor
from segman_mmseg.config_checks import check_config, load_config, reject_misspelled_keys, report_batch_size

T_ADE = str(CONFIGS / "segman/tiny/segman_t_ade.py")


def _cfg(**options) -> Config:
    return load_config(T_ADE, {"model.backbone.pretrained": None, **options})


def test_missing_config_file_says_where_it_looked_and_where_configs_are(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"segman_t_ad\.py' does not exist \(relative to .*local_configs"):
        load_config("local_configs/segman/tiny/segman_t_ad.py")
    assert load_config(T_ADE, {"model.decode_head.num_classes": 7}).model.decode_head.num_classes == 7


def test_unknown_backbone_type_names_the_registry():
    cfg = _cfg(**{"model.backbone.type": "SegMANEncoder_x"})
    with pytest.raises(KeyError, match="SegMANEncoder_x is not in the (models|backbone) registry"):
        build_segmentor(cfg.model)


def test_decoder_key_typo_suggests_the_right_key():
    cfg = _cfg(**{"model.decode_head.num_clases": 19})
    with pytest.raises(TypeError, match="'num_clases' \\(did you mean 'num_classes'\\?\\)"):
        build_segmentor(cfg.model)


def test_backbone_key_typo_suggests_the_right_key():
    cfg = _cfg(**{"model.backbone.drop_path": 0.1})
    with pytest.raises(TypeError, match="did you mean 'drop_path_rate'"):
        build_segmentor(cfg.model)


def test_missing_imagenet_checkpoint_fails_at_build_time():
    cfg = _cfg(**{"model.backbone.pretrained": "pretrained/missing.pth.tar"})
    with pytest.raises(FileNotFoundError, match="model.backbone.pretrained=None"):
        build_segmentor(cfg.model)


def test_missing_data_root_names_the_folder_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="data/ADEChallengeData2016/images/training.*README"):
        check_config(_cfg(), training=True)


def test_misspelled_top_level_key_is_an_error():
    cfg = _cfg()
    cfg.evalution = dict(interval=10)
    with pytest.raises(ValueError, match="did you mean 'evaluation'"):
        reject_misspelled_keys(cfg)


@pytest.mark.parametrize("options,error,match", [
    ({"runner.max_iters": "six"}, TypeError, r"runner.max_iters must be an integer, got 'six'"),
    ({"optimizer.lr": "1e-4"}, TypeError, r"optimizer.lr must be a number"),
    ({"data.samples_per_gpu": 0}, ValueError, r"data.samples_per_gpu must be at least 1"),
    ({"data.train.dataset.pipeline.3.crop_size": "224"}, TypeError, r"crop_size must be two positive integers"),
])
def test_settings_of_the_wrong_type_are_named(options, error, match, monkeypatch):
    cfg = _cfg()
    cfg.merge_from_dict(options)
    monkeypatch.setattr("segman_mmseg.config_checks.check_data_roots", lambda cfg, splits: None)
    with pytest.raises(error, match=match):
        check_config(cfg, training=True)


def test_a_total_batch_of_one_says_what_to_set():
    cfg = _cfg()
    cfg.data.samples_per_gpu = 1
    with pytest.raises(ValueError, match="data.samples_per_gpu >= 2"):
        report_batch_size(cfg, world_size=1, logger=logging.getLogger("test_batch"))
    report_batch_size(cfg, world_size=8, logger=logging.getLogger("test_batch"))


def test_total_batch_differing_from_the_paper_warns(caplog):
    logger = logging.getLogger("test_batch")
    with caplog.at_level(logging.INFO, logger="test_batch"):
        assert report_batch_size(_cfg(), world_size=2, logger=logger) == 8
    assert "differs from the paper's 16" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="test_batch"):
        report_batch_size(_cfg(), world_size=4, logger=logger)
    assert "differs" not in caplog.text
