"""tools/pytorch2onnx.py and tools/test.py on the exported file, as a user deploys the toy model: the file's
logits match PyTorch's and its mIoU equals the checkpoint's."""
from __future__ import annotations

import json

import pytest
from segmentation_testing import TOY, data_options, run_tool

pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")
AT_224 = ["data.test.pipeline.1.img_scale=(224,224)"]  # the toy test images, unscaled


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    work, _ = trained
    path = tmp_path_factory.mktemp("onnx") / "toy.onnx"
    proc = run_tool("pytorch2onnx.py", TOY, str(work / "iter_2.pth"), "--shape", "224", "224", "--output-file",
                    str(path), "--dynamic-batch", "--verify")
    return path, proc


def _miou(work_dir, checkpoint, toy_root, *options) -> float:
    run_tool("test.py", TOY, str(checkpoint), "--eval", "mIoU", "--work-dir", str(work_dir), "--cfg-options",
             *data_options(toy_root), *options)
    return json.loads(sorted(work_dir.glob("eval_single_scale_*.json"))[-1].read_text())["metric"]["mIoU"]


def test_export_verifies_against_pytorch(exported):
    path, proc = exported
    assert path.is_file()
    assert "(any batch, 224×224, opset 18)" in proc.stdout  # verified on a batch of 3
    error = float(proc.stdout.split("largest difference ")[1].split()[0])
    assert error < 1e-4


def test_onnx_miou_equals_the_checkpoints(exported, trained, toy_root, tmp_path):
    path, _ = exported
    work, _ = trained
    assert _miou(tmp_path / "onnx", path, toy_root, *AT_224) == _miou(tmp_path / "pth", work / "iter_2.pth",
                                                                        toy_root, *AT_224)


def test_onnx_of_another_size_resizes_each_image(exported, toy_root, tmp_path):
    """The config's own pipeline scales the images to 256²: each is resized to the file's 224² and back."""
    path, _ = exported
    assert 0.0 <= _miou(tmp_path, path, toy_root) <= 1.0


@pytest.mark.parametrize("args,message", [
    (["--shape", "200", "224"], "sides of at least 224 px that are multiples of 32"),
    (["--shape", "240", "256"], "multiples of 32"),
])
def test_export_rejects_sizes_segman_cannot_take(trained, tmp_path, args, message):
    work, _ = trained
    proc = run_tool("pytorch2onnx.py", TOY, str(work / "iter_2.pth"), *args, "--output-file",
                    str(tmp_path / "x.onnx"), check=False)
    assert proc.returncode != 0 and message in proc.stderr


def test_test_tool_refuses_to_compile_an_onnx_file(exported, toy_root):
    path, _ = exported
    proc = run_tool("test.py", TOY, str(path), "--eval", "mIoU", "--compile", check=False)
    assert proc.returncode != 0 and "--compile applies to PyTorch checkpoints" in proc.stderr
