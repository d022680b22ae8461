"""Errors that name the problem: data layout, model names, checkpoints, batch size."""
from __future__ import annotations

import shutil
import sys

import pytest
import timm
import torch

from classification_testing import CLASSIFICATION, load_script, run, train_argv
from segman.models import CheckpointError

train = load_script("train")
validate = load_script("validate")


@pytest.fixture
def data_copy(synthetic_root, tmp_path):
    return shutil.copytree(synthetic_root, tmp_path / "data")


def test_missing_data_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="data dir .*missing.* not found; expected DATA/train/<class>"):
        train.main(train_argv(tmp_path / "missing", tmp_path))


def test_missing_split(data_copy, tmp_path):
    shutil.rmtree(data_copy / "val")
    with pytest.raises(FileNotFoundError, match=r"no 'val' folder in the data dir .* \(it has: train\)"):
        train.main(train_argv(data_copy, tmp_path))


def test_empty_class_folder(data_copy, tmp_path):
    (data_copy / "train" / "c99_empty").mkdir()
    (data_copy / "val" / "c99_empty").mkdir()
    (data_copy / "val" / "c99_empty" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="1 of 3 class folders in .*train.* hold no images: c99_empty"):
        train.main(train_argv(data_copy, tmp_path))
    with pytest.raises(ValueError, match="1 of 3 class folders in .*val.* hold no images: c99_empty"):
        validate.main(["--data-dir", str(data_copy), "--checkpoint", __file__])


def test_train_and_val_classes_differ(data_copy, tmp_path):
    shutil.copytree(data_copy / "train" / "c00_disk", data_copy / "train" / "c02_extra")
    with pytest.raises(ValueError, match=r"different class folders \(only in train: \['c02_extra'\]"):
        train.main(train_argv(data_copy, tmp_path))


def test_no_class_folders(tmp_path):
    (tmp_path / "data" / "train").mkdir(parents=True)
    (tmp_path / "data" / "val").mkdir()
    with pytest.raises(ValueError, match="has no class folders"):
        train.main(train_argv(tmp_path / "data", tmp_path))


@pytest.mark.parametrize("name", ["resnet50", "segmanencoder_s"])
def test_unknown_model_lists_the_segman_names(synthetic_root, tmp_path, name):
    names = "SegMANEncoder_t, SegMANEncoder_s, SegMANEncoder_b, SegMANEncoder_l"
    with pytest.raises(ValueError, match=f"unknown model '{name}'.*choose one of {names}"):
        train.main(train_argv(synthetic_root, tmp_path, "--model", name))
    with pytest.raises(ValueError, match=f"unknown model '{name}'.*choose one of {names}"):
        validate.main(["--data-dir", str(synthetic_root), "--checkpoint", __file__, "--model", name])


def test_more_classes_than_the_classifier(synthetic_root, tmp_path):
    with pytest.raises(ValueError, match="has 2 classes, more than --num-classes 1"):
        train.main(train_argv(synthetic_root, tmp_path, "--num-classes", "1"))


def test_fewer_images_than_a_batch(synthetic_root, tmp_path):
    with pytest.raises(ValueError, match="4 training images are fewer than one batch"):
        train.main(train_argv(synthetic_root, tmp_path, "--batch-size", "8"))


def test_negative_seed(synthetic_root, tmp_path):
    with pytest.raises(ValueError, match="--seed must be a non-negative integer, got -1"):
        train.main(train_argv(synthetic_root, tmp_path, "--seed", "-1"))


def test_odd_batch_with_mixup(synthetic_root, tmp_path):
    with pytest.raises(ValueError, match="Mixup/CutMix need an even batch per process, got --batch-size 1"):
        train.main(train_argv(synthetic_root, tmp_path, "--batch-size", "1"))


def test_validate_checkpoint_errors(synthetic_root, tmp_path):
    base = ["--data-dir", str(synthetic_root), "--model", "SegMANEncoder_t", "--workers", "0"]
    with pytest.raises(FileNotFoundError, match="checkpoint .*missing.pth.tar' not found"):
        validate.main(base + ["--checkpoint", str(tmp_path / "missing.pth.tar")])
    state_dict = timm.create_model("SegMANEncoder_t").state_dict()
    torch.save({"state_dict": state_dict, "epoch": 0}, tmp_path / "no_ema.pth.tar")
    with pytest.raises(CheckpointError, match="has no state_dict_ema .*drop --use-ema"):
        validate.main(base + ["--checkpoint", str(tmp_path / "no_ema.pth.tar"), "--use-ema"])
    with pytest.raises(CheckpointError, match="weights alone cannot resume"):
        train.main(train_argv(synthetic_root, tmp_path, "--resume", str(tmp_path / "no_ema.pth.tar")))


def test_command_line_error_is_one_line(tmp_path):
    proc = run(sys.executable, str(CLASSIFICATION / "train.py"), "--data-dir", str(tmp_path / "missing"), check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: data dir ") and "Traceback" not in proc.stderr
