"""Loading official-style checkpoints: ImageNet encoders (timm) and mmseg segmentors (docs/model.md §7)."""
import argparse
import logging

import numpy as np
import pytest
import timm
import torch

from model_testing import TINY, TINY_INPUT, Opaque, rename_in_pickle
from segman.models import (CheckpointError, SegMAN, SegMANEncoder, load_encoder_checkpoint,
                           load_segmentor_checkpoint, load_checkpoint_file, segman_encoder)

LOGGER = "segman.models.checkpoint"


def imagenet_checkpoint(model, ema_offset=0.0, prefix=""):
    """A timm CheckpointSaver-style dict: raw and EMA weights, argparse args."""
    ema = {prefix + k: v + ema_offset if v.is_floating_point() else v for k, v in model.state_dict().items()}
    return {"epoch": 299, "arch": "SegMANEncoder_t", "state_dict": model.state_dict(), "state_dict_ema": ema,
            "optimizer": {"state": {}, "param_groups": []}, "version": 2, "metric": 76.2,
            "args": argparse.Namespace(model="SegMANEncoder_t", lr=4e-3, drop_path=0.0)}


@pytest.fixture
def classifier():
    torch.manual_seed(0)
    return SegMANEncoder(**TINY, num_classes=5)


@pytest.fixture
def imagenet_file(tmp_path, classifier):
    path = tmp_path / "SegMAN_Encoder_tiny.pth.tar"
    torch.save(imagenet_checkpoint(classifier, ema_offset=1.0), path)
    return path


class TestEncoder:
    def test_backbone_takes_ema_and_drops_classifier(self, imagenet_file, classifier, caplog):
        backbone = SegMANEncoder(**TINY, backbone=True)
        with caplog.at_level(logging.INFO, logger=LOGGER):
            load_encoder_checkpoint(backbone, imagenet_file)
        records = [r for r in caplog.records if r.name == LOGGER]
        assert len(records) == 1 and "classifier" in records[0].getMessage()
        for key, value in backbone.state_dict().items():
            source = classifier.state_dict()[key]
            assert torch.equal(value, source + 1.0 if source.is_floating_point() else source), key

    def test_module_prefix_and_plain_state_dict(self, classifier):
        backbone = SegMANEncoder(**TINY, backbone=True)
        wrapped = {"state_dict": {"module." + k: v for k, v in classifier.state_dict().items()}}
        load_encoder_checkpoint(backbone, wrapped)
        assert torch.equal(backbone.patch_embed[0].weight, classifier.patch_embed[0].weight)
        load_encoder_checkpoint(backbone, classifier.state_dict())

    def test_classification_form_keeps_classifier(self, imagenet_file, classifier):
        torch.manual_seed(1)
        model = SegMANEncoder(**TINY, num_classes=5)
        load_encoder_checkpoint(model, imagenet_file)
        torch.testing.assert_close(model.classifier[4].weight, classifier.classifier[4].weight + 1.0)

    def test_mismatch_lists_keys(self, classifier):
        state = dict(classifier.state_dict())
        del state["layers.0.blocks.0.cpe1.weight"]
        state["layers.0.blocks.0.extra.weight"] = torch.zeros(1)
        model = SegMANEncoder(**TINY, backbone=True)
        with pytest.raises(CheckpointError) as info:
            load_encoder_checkpoint(model, state)
        message = str(info.value)
        assert "missing (1): layers.0.blocks.0.cpe1.weight" in message
        assert "unexpected (1): layers.0.blocks.0.extra.weight" in message
        assert "strict=False" in message

    def test_non_strict_from_another_variant(self, classifier, caplog):
        other = SegMANEncoder(**{**TINY, "embed_dims": (8, 16, 16, 24)}, backbone=True)
        with pytest.raises(CheckpointError, match=r"shape mismatch \(\d+\): .*layers\.6\.blocks\.0\.cpe1\.weight"):
            load_encoder_checkpoint(other, classifier.state_dict())
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            load_encoder_checkpoint(other, classifier.state_dict(), strict=False)
        assert any("shape mismatch" in r.getMessage() for r in caplog.records)
        assert torch.equal(other.layers[0].blocks[0].cpe1.weight, classifier.layers[0].blocks[0].cpe1.weight)

    def test_timm_pretrained_file(self, tmp_path):
        torch.manual_seed(0)
        source = segman_encoder("t")
        path = tmp_path / "SegMAN_Encoder_t.pth.tar"
        torch.save(imagenet_checkpoint(source), path)
        model = timm.create_model("SegMANEncoder_t", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
        assert torch.equal(model.classifier[4].weight, source.classifier[4].weight)
        assert torch.equal(model.layers[6].blocks[1].token_mixer.rpb[1], source.layers[6].blocks[1].token_mixer.rpb[1])
        adapted = timm.create_model("SegMANEncoder_t", pretrained=True, num_classes=10,
                                    pretrained_cfg_overlay=dict(file=str(path)))
        assert adapted.get_classifier().out_channels == 10
        assert torch.equal(adapted.classifier[0].weight, source.classifier[0].weight)
        backbone = timm.create_model("SegMANEncoder_t", pretrained=True, backbone=True,
                                     pretrained_cfg_overlay=dict(file=str(path)))
        assert torch.equal(backbone.layers[4].blocks[3].mlp.fc2.weight, source.layers[4].blocks[3].mlp.fc2.weight)


class TestSegmentor:
    def test_mmseg_checkpoint_round_trip(self, tmp_path):
        torch.manual_seed(0)
        model = SegMAN("t", num_classes=5, channels=8, feat_proj_dim=12, **TINY)
        model.train()(torch.randn(2, 3, TINY_INPUT, TINY_INPUT))  # non-trivial BN statistics
        path = tmp_path / "segman_tiny_ade.pth"
        meta = {"mmcv_version": "1.7.2", "CLASSES": ("wall", "floor"), "PALETTE": [[120, 120, 120]], "config": "..."}
        torch.save({"meta": meta, "state_dict": model.state_dict(), "optimizer": {"state": {}}}, path)
        torch.manual_seed(1)
        restored = SegMAN("t", num_classes=5, channels=8, feat_proj_dim=12, **TINY)
        load_segmentor_checkpoint(restored, path)
        img = torch.randn(1, 3, TINY_INPUT, TINY_INPUT)
        assert torch.equal(model.eval()(img), restored.eval()(img))

    def test_wrong_class_count(self):
        model = SegMAN("t", num_classes=5, channels=8, feat_proj_dim=12, **TINY)
        other = SegMAN("t", num_classes=3, channels=8, feat_proj_dim=12, **TINY)
        with pytest.raises(CheckpointError, match=r"decode_head\.conv_seg\.weight: checkpoint \(5, 8, 1, 1\) vs model"):
            load_segmentor_checkpoint(other, {"state_dict": model.state_dict()})


class TestSafety:
    def test_unsafe_file_needs_opt_in(self, tmp_path, classifier, monkeypatch):
        monkeypatch.delenv("SEGMAN_ALLOW_UNSAFE_CHECKPOINTS", raising=False)
        path = tmp_path / "unsafe.pth"
        torch.save({"state_dict": classifier.state_dict(), "extra": Opaque()}, path)
        with pytest.raises(CheckpointError, match="allow_unsafe=True") as info:
            load_encoder_checkpoint(SegMANEncoder(**TINY, num_classes=5), path)
        assert "model_testing.Opaque" in str(info.value)
        load_encoder_checkpoint(SegMANEncoder(**TINY, num_classes=5), path, allow_unsafe=True)

    def test_environment_opt_in(self, tmp_path, monkeypatch):
        path = tmp_path / "unsafe.pth"
        torch.save({"extra": Opaque()}, path)
        monkeypatch.setenv("SEGMAN_ALLOW_UNSAFE_CHECKPOINTS", "1")
        assert isinstance(load_checkpoint_file(path)["extra"], Opaque)
        with pytest.raises(CheckpointError):  # an explicit argument wins
            load_checkpoint_file(path, allow_unsafe=False)

    def test_timm_args_namespace_is_safe(self, imagenet_file):
        assert isinstance(load_checkpoint_file(imagenet_file)["args"], argparse.Namespace)

    @pytest.mark.parametrize("numpy_1_names", [False, True])
    def test_mmcv_numpy_meta_is_safe(self, tmp_path, numpy_1_names):
        path = tmp_path / "mmseg.pth"
        meta = {"hook_msgs": {"best_score": np.float64(0.47), "last_ckpt": "iter_160000.pth"}, "seed": np.int64(0),
                "palette": np.zeros((2, 3), dtype=np.uint8)}
        torch.save({"meta": meta, "state_dict": {"w": torch.ones(2)}}, path)
        if numpy_1_names:  # the official files were written under numpy 1.x: numpy.core.multiarray
            rename_in_pickle(path, b"numpy._core.multiarray", b"numpy.core.multiarray")
        loaded = load_checkpoint_file(path)
        assert loaded["meta"]["hook_msgs"]["best_score"] == 0.47
        assert loaded["meta"]["palette"].shape == (2, 3)
