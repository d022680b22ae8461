"""tools/train.py, test.py, image_demo.py, show_predictions.py and resuming, run as a user runs them (tiny toy
set)."""
from __future__ import annotations

import json
import types

import mmcv
import numpy as np
import pytest
import torch
from segmentation_testing import TOY, data_options, load_tool, run_tool


def test_train_saves_checkpoints_config_and_logs(trained):
    work, proc = trained
    assert (work / "iter_1.pth").is_file() and (work / "iter_2.pth").is_file()
    assert (work / "segman_t_toy.py").is_file()          # resolved config in the work dir
    assert list((work / "tf_logs").glob("events.*"))       # TensorBoard
    log = (sorted(work.glob("*.log.json"))[-1]).read_text().splitlines()
    entries = [json.loads(line) for line in log[1:]]
    assert [e["iter"] for e in entries if e.get("mode") == "train"] == [1, 2]
    assert any("mIoU" in e for e in entries)                # evaluated during training
    assert "total batch size: 2 (1 process(es) × 2 samples)" in proc.stderr + proc.stdout
    assert "--cuda-graph needs a GPU; training on the CPU runs eagerly" in proc.stderr + proc.stdout


def test_test_tool_reports_miou(trained, toy_root):
    work, _ = trained
    proc = run_tool("test.py", TOY, str(work / "iter_2.pth"), "--eval", "mIoU", "--work-dir", str(work),
                    "--cfg-options", *data_options(toy_root))
    assert "mIoU" in proc.stdout
    result = json.loads(sorted(work.glob("eval_single_scale_*.json"))[-1].read_text())
    assert 0.0 <= result["metric"]["mIoU"] <= 1.0


def test_resume_continues_from_the_saved_iteration(trained, toy_root, tmp_path):
    work, _ = trained
    run_tool("train.py", TOY, "--work-dir", str(tmp_path), "--resume-from", str(work / "iter_1.pth"),
             "--no-validate", "--cfg-options", *data_options(toy_root), "runner.max_iters=2",
             "checkpoint_config.interval=1")
    resumed = torch.load(tmp_path / "iter_2.pth", weights_only=False)
    first = torch.load(work / "iter_1.pth", weights_only=False)
    assert resumed["meta"]["iter"] == first["meta"]["iter"] + 1  # mmcv records the iteration before it ends
    log = [json.loads(line) for line in sorted(tmp_path.glob("*.log.json"))[-1].read_text().splitlines()[1:]]
    assert [e["iter"] for e in log if e.get("mode") == "train"] == [2]   # iteration 1 was not redone
    # AdamW state came from the checkpoint: one more step on top of iteration 1's
    step = next(iter(resumed["optimizer"]["state"].values()))["step"]
    assert int(step) == int(next(iter(first["optimizer"]["state"].values()))["step"]) + 1


def test_auto_resume_finds_the_latest_checkpoint(trained, toy_root):
    work, _ = trained
    proc = run_tool("train.py", TOY, "--work-dir", str(work), "--auto-resume", "--no-validate",
                    "--cfg-options", *data_options(toy_root), "runner.max_iters=2")
    assert "resumed from epoch" in (proc.stderr + proc.stdout) or "resumed" in (proc.stderr + proc.stdout)


def test_image_demo_writes_an_overlay(trained, toy_root, tmp_path):
    work, _ = trained
    image = sorted((toy_root / "images" / "validation").glob("*.jpg"))[0]
    out = tmp_path / "pred.png"
    proc = run_tool("image_demo.py", str(image), TOY, str(work / "iter_2.pth"), "--out-file", str(out))
    assert out.is_file() and "prediction written" in proc.stdout


def test_show_predictions_draws_image_truth_and_prediction(trained, toy_root, tmp_path):
    work, _ = trained
    out = tmp_path / "predictions.png"
    proc = run_tool("show_predictions.py", TOY, str(work / "iter_2.pth"), "--out", str(out), "--num", "2",
                    "--cfg-options", *data_options(toy_root))
    assert "2 images, ground truth and predictions drawn" in proc.stdout
    figure = mmcv.imread(str(out))
    assert figure.shape == (660, 900, 3)  # 2 rows of 3 panels and the legend, 100 dpi
    bad = run_tool("show_predictions.py", TOY, str(work / "iter_2.pth"), "--indices", "5", "--cfg-options",
                   *data_options(toy_root), check=False)
    assert bad.returncode != 0 and "choose images among the 2 of the test split" in bad.stderr


def test_show_predictions_ground_truth_follows_the_metric():
    """The figure's ground truth is what mIoU compares with: label_map, then reduce_zero_label (0 → ignored)."""
    show = load_tool("show_predictions")
    raw = np.array([[0, 1, 2], [255, 5, 3]], np.uint8)
    dataset = types.SimpleNamespace(get_gt_seg_map_by_idx=lambda i: raw, label_map=None, reduce_zero_label=True)
    assert show.ground_truth(dataset, 0).tolist() == [[255, 0, 1], [255, 4, 2]]
    dataset.label_map, dataset.reduce_zero_label = {5: 1}, False
    assert show.ground_truth(dataset, 0).tolist() == [[0, 1, 2], [255, 1, 3]]
    colours = show.colourise(np.array([[0, 1, 255]]), [[10, 20, 30], [40, 50, 60]])
    assert colours.tolist() == [[[10, 20, 30], [40, 50, 60], [0, 0, 0]]]


def test_test_tool_rejects_a_mismatched_checkpoint(trained, toy_root):
    work, _ = trained
    proc = run_tool("test.py", TOY, str(work / "iter_2.pth"), "--eval", "mIoU", "--cfg-options",
                    *data_options(toy_root), "model.decode_head.num_classes=9", check=False)
    assert proc.returncode != 0
    assert "decode_head.conv_seg.weight" in proc.stderr and "num_classes" in proc.stderr
