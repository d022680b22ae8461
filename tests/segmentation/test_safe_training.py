"""Crash-safe checkpoints, resume past bad files and the stop on non-finite training
(:mod:`segman_mmseg.safe_training`), as units and through ``tools/train.py`` on the toy set."""
from __future__ import annotations

import os
import types
import warnings

import pytest
import torch
from segmentation_testing import TOY, run_tool

import segman_mmseg  # noqa: F401  (installs the atomic save and the resume finder)
from segman.models import CheckpointError
from segman_mmseg.safe_training import StopOnNonFinite, _atomic_save, newest_good_checkpoint


def _write_good(path, value=1.0):
    torch.save({"state_dict": {"w": torch.full((4,), value)}, "meta": {"iter": 1}}, path)


def test_an_interrupted_save_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "iter_1.pth"
    _write_good(target, 1.0)

    def killed_midway(model, filename, **kwargs):
        with open(filename, "wb") as f:
            f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _atomic_save(killed_midway)(None, str(target))
    assert torch.load(target)["state_dict"]["w"][0] == 1.0
    assert os.listdir(tmp_path) == ["iter_1.pth"]

    def complete(model, filename, **kwargs):
        _write_good(filename, 2.0)

    _atomic_save(complete)(None, str(target))
    assert torch.load(target)["state_dict"]["w"][0] == 2.0 and os.listdir(tmp_path) == ["iter_1.pth"]


def test_runners_save_through_the_atomic_writer():
    import mmcv.runner.epoch_based_runner as epoch_runner
    import mmcv.runner.iter_based_runner as iter_runner

    assert iter_runner.save_checkpoint._segman_atomic and epoch_runner.save_checkpoint._segman_atomic


def test_auto_resume_skips_damaged_checkpoints_and_names_them(tmp_path):
    _write_good(tmp_path / "iter_1.pth")
    (tmp_path / "iter_2.pth").write_bytes(os.urandom(3000))
    good = (tmp_path / "iter_1.pth").read_bytes()
    (tmp_path / "iter_10.pth").write_bytes(good[:len(good) // 2])   # truncated
    (tmp_path / "latest.pth").symlink_to("iter_10.pth")
    (tmp_path / ".iter_11.pth.x7q.tmp").write_bytes(b"partial")     # an interrupted save
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert newest_good_checkpoint(str(tmp_path)) == str(tmp_path / "iter_1.pth")
    messages = "\n".join(str(w.message) for w in caught)
    assert "iter_10.pth" in messages and "iter_2.pth" in messages and "not a readable checkpoint" in messages
    assert not (tmp_path / ".iter_11.pth.x7q.tmp").exists()


def test_auto_resume_with_only_bad_checkpoints_says_so(tmp_path):
    (tmp_path / "iter_4.pth").write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError, match="none of the checkpoints .* can be read"):
            newest_good_checkpoint(str(tmp_path))
    assert newest_good_checkpoint(str(tmp_path / "missing")) is None


def _runner(tmp_path, loss, weight):
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.fill_(weight)
    outputs = dict(loss=torch.tensor(loss), log_vars={"decode.loss_ce": loss, "loss": loss})
    return types.SimpleNamespace(outputs=outputs, model=model, iter=6, work_dir=str(tmp_path))


@pytest.mark.parametrize("loss,weight,match", [
    (float("nan"), 1.0, r"iteration 7: the loss is nan \(decode.loss_ce=nan"),
    (1.5, float("inf"), r"iteration 7: the step made weights non-finite \(first: weight"),
])
def test_the_hook_stops_on_non_finite_values(tmp_path, loss, weight, match):
    with pytest.raises(FloatingPointError, match=match):
        StopOnNonFinite().after_train_iter(_runner(tmp_path, loss, weight))
    StopOnNonFinite().after_train_iter(_runner(tmp_path, 1.5, 1.0))  # finite: nothing happens


def test_a_diverging_run_stops_and_keeps_only_finite_checkpoints(toy_root, tmp_path):
    options = [f"data.{split}.data_root={toy_root}" for split in ("train", "val", "test")]
    proc = run_tool("train.py", TOY, "--work-dir", str(tmp_path), "--seed", "0", "--no-validate", "--cfg-options",
                    *options, "data.samples_per_gpu=2", "data.workers_per_gpu=0", "runner.max_iters=8",
                    "checkpoint_config.interval=1", "optimizer.lr=1e6", "lr_config.warmup_iters=1", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "training stopped at iteration" in output, output[-3000:]
    assert "Lower the learning rate" in output
    for path in tmp_path.glob("iter_*.pth"):
        weights = torch.load(path, weights_only=False)["state_dict"]
        assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point()), path


def log_text(folder, attempt):
    return (folder / f"attempt_{attempt}.log").read_text()[-3000:]


def test_killed_runs_resume_to_the_end_with_every_checkpoint_readable(toy_root, tmp_path):
    """SIGKILL at random moments (during iterations and checkpoint writes), then --auto-resume, until the
    run completes: no partial file is ever left under a checkpoint name."""
    import random
    import subprocess
    import sys
    import time

    from segmentation_testing import SEGMENTATION

    from segman.models import load_checkpoint_file

    options = [f"data.{split}.data_root={toy_root}" for split in ("train", "val", "test")]
    command = [sys.executable, str(SEGMENTATION / "tools" / "train.py"), TOY, "--work-dir", str(tmp_path),
               "--seed", "0", "--no-validate", "--auto-resume", "--cfg-options", *options, "data.samples_per_gpu=2",
               "data.workers_per_gpu=0", "runner.max_iters=6", "checkpoint_config.interval=1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    rng = random.Random(0)
    for attempt in range(8):
        log = open(tmp_path / f"attempt_{attempt}.log", "w")
        proc = subprocess.Popen(command, cwd=SEGMENTATION, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + (rng.uniform(12, 30) if attempt < 3 else 600)
        while proc.poll() is None and time.monotonic() < deadline:
            if attempt < 3 and list(tmp_path.glob(".*.tmp")):  # a save in progress: kill it there
                break
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.close()
        for path in tmp_path.glob("iter_*.pth"):
            load_checkpoint_file(path)  # raises on a partial file
        if proc.returncode == 0:
            break
    assert proc.returncode == 0, log_text(tmp_path, attempt)
    assert load_checkpoint_file(tmp_path / "iter_6.pth")["meta"]["iter"] == 5
