"""Bad dataset files are named: unreadable images and label maps, labels of another size than their
image (:mod:`segman_mmseg.loading`), label values outside the classes (the head's ``check_labels``); bad
images given to ``predict`` (NaN values, 12-bit data in a 16-bit file)."""
from __future__ import annotations

import shutil

import mmcv
import numpy as np
import pytest
import torch
from segmentation_testing import TOY, load_tool, run_tool
from mmseg.datasets.builder import PIPELINES

import segman_mmseg  # noqa: F401  (registers the loaders under mmseg's names)
from segman_mmseg.decode_head import SegMANDecoder
from segman_mmseg.inference import load_segmentor, predict
from segman_mmseg.loading import too_dark_for_8_bits


def _image_results(folder, name):
    return dict(img_prefix=str(folder), img_info=dict(filename=name, ann=dict(seg_map=name[:-4] + ".png")),
                seg_prefix=str(folder), ann_info=dict(seg_map=name[:-4] + ".png"), seg_fields=[])


@pytest.mark.parametrize("content", [b"this is a text file", b"\xff\xd8\xff\xe0 a truncated jpeg"],
                         ids=["text", "truncated"])
def test_an_unreadable_image_is_named(tmp_path, content):
    (tmp_path / "bad.jpg").write_bytes(content)
    load = mmcv.build_from_cfg(dict(type="LoadImageFromFile"), PIPELINES)
    with pytest.raises(ValueError, match=r"bad\.jpg: not a readable image"):
        load(_image_results(tmp_path, "bad.jpg"))


def test_a_label_of_another_size_is_named(tmp_path):
    mmcv.imwrite(np.zeros((30, 40, 3), np.uint8), str(tmp_path / "a.jpg"))
    mmcv.imwrite(np.zeros((30, 41), np.uint8), str(tmp_path / "a.png"))
    results = mmcv.build_from_cfg(dict(type="LoadImageFromFile"), PIPELINES)(_image_results(tmp_path, "a.jpg"))
    with pytest.raises(ValueError, match=r"a\.png: label map of 41×30 px for an image of 40×30 px"):
        mmcv.build_from_cfg(dict(type="LoadAnnotations"), PIPELINES)(results)


def test_labels_outside_the_classes_are_named():
    head = SegMANDecoder(feat_proj_dim=8, in_channels=[8, 8, 8, 8], in_index=[0, 1, 2, 3], channels=8,
                         num_classes=5, norm_cfg=dict(type="BN", requires_grad=True))
    labels = torch.full((2, 1, 4, 4), 3)
    labels[0, 0, 0, 0] = 255                  # the ignore index is fine
    head.check_labels(labels, [dict(filename="a.png"), dict(filename="b.png")])
    labels[1, 0, 1, 1] = 200
    with pytest.raises(ValueError, match=r"labels \[200\] are outside the 5 classes .* in b\.png"):
        head.check_labels(labels, [dict(filename="a.png"), dict(filename="b.png")])


def test_training_names_a_broken_image(toy_root, tmp_path):
    root = tmp_path / "toy"
    shutil.copytree(toy_root, root)
    broken = sorted((root / "images" / "training").glob("*.jpg"))[0]
    broken.write_bytes(broken.read_bytes()[:200])
    options = [f"data.{split}.data_root={root}" for split in ("train", "val", "test")]
    proc = run_tool("train.py", TOY, "--work-dir", str(tmp_path / "work"), "--no-validate", "--cfg-options",
                    *options, "data.samples_per_gpu=8", "data.workers_per_gpu=0", "runner.max_iters=1", check=False)
    assert proc.returncode != 0 and f"{broken}: not a readable image" in proc.stdout + proc.stderr


def test_check_dataset_lists_every_bad_file(toy_root, tmp_path, capsys):
    main = load_tool("check_dataset").main

    root = tmp_path / "toy"
    shutil.copytree(toy_root, root)
    images = sorted((root / "images" / "training").glob("*.jpg"))
    labels = sorted((root / "annotations" / "training").glob("*.png"))
    images[0].write_bytes(b"not an image")
    label = mmcv.imread(str(labels[1]), flag="unchanged")
    label[0, 0] = 200
    mmcv.imwrite(label, str(labels[1]))
    mmcv.imwrite(np.zeros((10, 10), np.uint8), str(labels[2]))
    labels[3].unlink()
    options = [f"data.{split}.data_root={root}" for split in ("train", "val")]
    assert main([TOY, "--cfg-options", *options]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [f"train: {images[0]}: not a readable image",
                   f"train: {labels[1]}: values [200] outside the 5 classes, stored as class + 1 "
                   f"(reduce_zero_label) (ignore index 255)",
                   f"train: {labels[2]}: 10×10 px, its image 224×224",
                   f"train: {labels[3]}: missing (the label map of {images[3]})"]
    assert main([TOY, "--cfg-options", *[f"data.{split}.data_root={toy_root}" for split in ("train", "val")]]) == 0


def test_evaluation_names_labels_outside_the_classes(toy_root, tmp_path):
    """mmseg's metrics would leave such pixels out silently (a lower mIoU, exit 0)."""
    from mmseg.models import build_segmentor

    from segman_mmseg.config_checks import load_config

    root = tmp_path / "toy"
    shutil.copytree(toy_root, root)
    label_path = sorted((root / "annotations" / "validation").glob("*.png"))[0]
    label = mmcv.imread(str(label_path), flag="unchanged")
    label[0, 0] = 200
    mmcv.imwrite(label, str(label_path))
    cfg = load_config(TOY, {"model.backbone.pretrained": None})
    torch.save({"state_dict": build_segmentor(cfg.model).state_dict(), "meta": {}}, tmp_path / "model.pth")
    options = [f"data.{split}.data_root={root}" for split in ("train", "val", "test")]
    proc = run_tool("test.py", TOY, str(tmp_path / "model.pth"), "--eval", "mIoU", "--work-dir", str(tmp_path),
                    "--cfg-options", *options, check=False)
    assert proc.returncode != 0
    assert f"{label_path}: values [200] outside the 5 classes" in proc.stdout + proc.stderr


def test_twelve_bit_data_in_sixteen_bits_is_recognised():
    assert "reach only 4095 of 65535" in too_dark_for_8_bits(np.full((4, 4), 4095, np.uint16))
    assert too_dark_for_8_bits(np.full((4, 4), 40000, np.uint16)) is None
    assert too_dark_for_8_bits(np.full((4, 4), 15, np.uint8)) is None


def test_predict_refuses_nan_and_warns_for_dark_16_bit_files(trained, tmp_path):
    work, _ = trained
    model = load_segmentor(TOY, str(work / "iter_2.pth"))
    image = np.full((224, 224, 3), 100.0, np.float32)
    image[5, 5, 1] = np.nan
    with pytest.raises(ValueError, match="1 NaN or infinite values"):
        predict(model, image)
    path = str(tmp_path / "twelve_bit.png")
    mmcv.imwrite(np.random.default_rng(0).integers(0, 4096, (224, 224, 3)).astype(np.uint16), path)
    with pytest.warns(UserWarning, match="twelve_bit.png: 16-bit image whose values reach only"):
        assert predict(model, path).shape == (224, 224)
