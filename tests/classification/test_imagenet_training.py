"""classification/train.py and validate.py end to end on a tiny synthetic set (CPU, SegMAN-T).

One training run is shared: 2 epochs of 2 steps, stopped when epoch 1 begins (as a pre-empted
job would be), so its checkpoints are those of epoch 0.  ``--resume`` must then continue exactly
where it stopped.
"""
from __future__ import annotations

import copy
import csv
import json
import random
import shutil

import numpy as np
import pytest
import timm
import torch

from classification_testing import SCRIPTS, load_script, run, train_argv
from segman.models import load_checkpoint_file, load_encoder_checkpoint, segman_encoder

train = load_script("train")
validate = load_script("validate")


class Interrupted(Exception):
    """Stands in for a job killed between epochs."""


def _snapshot(epoch, model, optimizer, num_updates, model_ema) -> dict:
    return {"epoch": epoch, "num_updates": num_updates, "lrs": [g["lr"] for g in optimizer.param_groups],
            "optimizer": copy.deepcopy(optimizer.state_dict()),
            "model": copy.deepcopy(timm.utils.unwrap_model(model).state_dict()),
            "ema": copy.deepcopy(model_ema.module.state_dict()),
            "rng": (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())}


def _recording_train_one_epoch(records: list, stop_at: int | None = None):
    """``train_one_epoch`` that snapshots the state it starts from, and raises at ``stop_at``."""
    original = train.train_one_epoch

    def wrapper(epoch, model, loader, optimizer, loss_fn, lr_scheduler, num_updates, args, device, amp_dtype,
                loss_scaler, model_ema):
        records.append(_snapshot(epoch, model, optimizer, num_updates, model_ema))
        if epoch == stop_at:
            raise Interrupted
        return original(epoch, model, loader, optimizer, loss_fn, lr_scheduler, num_updates, args, device,
                        amp_dtype, loss_scaler, model_ema)

    return wrapper


@pytest.fixture(scope="module")
def interrupted(synthetic_root, tmp_path_factory):
    """Epoch 0 trained and saved; stopped as epoch 1 starts.  Returns (argv, experiment dir, records)."""
    output = tmp_path_factory.mktemp("output")
    argv = train_argv(synthetic_root, output)
    records = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "train_one_epoch", _recording_train_one_epoch(records, stop_at=1))
        with pytest.raises(Interrupted):
            train.main(argv)
    return argv, output / "SegMANEncoder_t-224", records


def _summary(experiment) -> list[dict]:
    with open(experiment / "summary.csv") as f:
        return list(csv.DictReader(f))


def test_training_writes_timm_checkpoints_and_logs(interrupted):
    _, experiment, records = interrupted
    assert [r["epoch"] for r in records] == [0, 1] and records[1]["num_updates"] == 2  # two steps in epoch 0
    for folder, prefix in (("checkpoints", "checkpoint"), ("checkpoints_ema", "checkpoint-ema")):
        for name in (f"{prefix}-0", "last", "model_best"):
            assert (experiment / folder / f"{name}.pth.tar").is_file(), (folder, name)
    checkpoint = load_checkpoint_file(experiment / "checkpoints" / "last.pth.tar")
    expected_keys = {"epoch", "arch", "state_dict", "state_dict_ema", "optimizer", "args", "version", "metric"}
    assert expected_keys <= set(checkpoint)
    assert checkpoint["epoch"] == 0 and checkpoint["arch"] == "SegMANEncoder_t" and checkpoint["version"] == 2
    assert "amp_scaler" not in checkpoint  # T trains in fp32
    for key in ("state_dict", "state_dict_ema"):
        assert not [k for k in checkpoint[key] if k.startswith("module.")]
    # the checkpoint holds the state epoch 1 started from
    for key, record in (("state_dict", "model"), ("state_dict_ema", "ema")):
        assert all(torch.equal(v, records[1][record][k]) for k, v in checkpoint[key].items())
    # the EMA (decay 0.99984) has barely moved from the initial weights, unlike the model
    first = records[0]["model"]
    assert any(not torch.equal(checkpoint["state_dict"][k], first[k]) for k in first)
    assert any(not torch.equal(checkpoint["state_dict"][k], checkpoint["state_dict_ema"][k]) for k in first)

    args = json.loads((experiment / "args.json").read_text())
    assert args["lr"] == pytest.approx(1e-3 * 2 / 1024) and args["drop_path"] == 0.0 and args["amp"] is False
    rows = _summary(experiment)
    assert [r["epoch"] for r in rows] == ["0"]
    assert {"train_loss", "train_images_per_s", "eval_top1", "eval_top5", "eval_ema_top1", "lr"} <= set(rows[0])
    assert list((experiment / "tensorboard").glob("events.out.tfevents.*"))


def test_ema_checkpoint_loads_into_the_timm_classifier(interrupted):
    _, experiment, _ = interrupted
    path = experiment / "checkpoints_ema" / "model_best.pth.tar"
    ema = load_checkpoint_file(path)["state_dict_ema"]
    model = timm.create_model("SegMANEncoder_t")
    load_encoder_checkpoint(model, path, strict=True)
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())
    # timm's own route: pretrained weights from a file (its filter takes state_dict_ema)
    model = timm.create_model("SegMANEncoder_t", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())


def test_ema_checkpoint_loads_into_the_segmentation_backbone(interrupted):
    _, experiment, _ = interrupted
    path = experiment / "checkpoints" / "last.pth.tar"
    ema = load_checkpoint_file(path)["state_dict_ema"]
    backbone = segman_encoder("t", backbone=True)
    missing, unexpected = load_encoder_checkpoint(backbone, path, strict=True)
    assert not missing and not unexpected
    assert set(backbone.state_dict()) == {k for k in ema if not k.startswith("classifier.")}
    assert all(torch.equal(v, ema[k]) for k, v in backbone.state_dict().items())


def test_ema_checkpoint_is_an_mmseg_backbone_pretrained(interrupted):
    """What a config's ``model.backbone.pretrained`` does with the file."""
    pytest.importorskip("mmseg")
    import segman_mmseg  # noqa: F401  (registers the backbones)
    from mmseg.models import build_backbone

    _, experiment, _ = interrupted
    path = experiment / "checkpoints_ema" / "last.pth.tar"
    backbone = build_backbone(dict(type="SegMANEncoder_t", pretrained=str(path)))
    backbone.init_weights()
    ema = load_checkpoint_file(path)["state_dict_ema"]
    assert all(torch.equal(v, ema[k]) for k, v in backbone.state_dict().items())


@pytest.mark.parametrize("use_ema", [False, True], ids=["model", "ema"])
def test_validate_reproduces_the_training_evaluation(interrupted, synthetic_root, tmp_path, use_ema):
    _, experiment, _ = interrupted
    results_file = tmp_path / "results.json"
    argv = ["--data-dir", str(synthetic_root), "--model", "SegMANEncoder_t", "--workers", "0", "--no-progress",
            "--checkpoint", str(experiment / "checkpoints" / "last.pth.tar"), "--results-file", str(results_file)]
    results = validate.main(argv + (["--use-ema"] if use_ema else []))
    assert json.loads(results_file.read_text()) == results
    assert results["num_images"] == 2 and results["num_classes"] == 1000 and results["use_ema"] is use_ema
    assert results["crop_pct"] == 0.9 and results["interpolation"] == "bicubic" and results["img_size"] == 224
    row = _summary(experiment)[0]
    prefix = "eval_ema_" if use_ema else "eval_"
    assert results["top1"] == pytest.approx(float(row[prefix + "top1"]), abs=1e-3)
    assert results["top5"] == pytest.approx(float(row[prefix + "top5"]), abs=1e-3)
    assert results["loss"] == pytest.approx(float(row[prefix + "loss"]), rel=1e-4)


def test_resume_continues_where_the_run_stopped(interrupted, monkeypatch, tmp_path):
    argv, stopped_experiment, stopped = interrupted
    experiment = tmp_path / stopped_experiment.name  # a copy: the other tests keep the stopped run
    shutil.copytree(stopped_experiment, experiment)
    argv = [str(tmp_path) if a == str(stopped_experiment.parent) else a for a in argv]
    records = []
    monkeypatch.setattr(train, "train_one_epoch", _recording_train_one_epoch(records))
    result = train.main(argv + ["--resume", str(experiment / "checkpoints" / "last.pth.tar")])
    assert result["start_epoch"] == 1 and [r["epoch"] for r in records] == [1]
    resumed, expected = records[0], stopped[1]
    assert resumed["num_updates"] == expected["num_updates"] == 2
    assert resumed["lrs"] == pytest.approx(expected["lrs"])  # the scheduler is at epoch 1
    # epoch 1 draws its data order, augmentations and drop-path from the same random states
    assert torch.equal(resumed["rng"][0], expected["rng"][0])
    assert np.array_equal(resumed["rng"][1], expected["rng"][1]) and resumed["rng"][2] == expected["rng"][2]
    for key in ("model", "ema"):
        assert all(torch.equal(v, expected[key][k]) for k, v in resumed[key].items()), key
    opt, opt_expected = resumed["optimizer"], expected["optimizer"]
    assert len(opt["state"]) == len(opt_expected["state"]) > 0
    for i, state in opt["state"].items():
        assert all(torch.equal(v, opt_expected["state"][i][k]) for k, v in state.items())
    # epoch 1 was trained and saved next to epoch 0
    assert [r["epoch"] for r in _summary(experiment)] == ["0", "1"]
    assert load_checkpoint_file(experiment / "checkpoints" / "last.pth.tar")["epoch"] == 1
    assert (experiment / "checkpoints_ema" / "checkpoint-ema-1.pth.tar").is_file()


def test_resume_restores_the_amp_scaler(interrupted, tmp_path):
    """fp16 AMP is too slow on a CPU to train here: the scaler's state goes through resume_checkpoint."""
    _, experiment, _ = interrupted
    checkpoint = load_checkpoint_file(experiment / "checkpoints" / "last.pth.tar")
    scaler_state = {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                    "_growth_tracker": 7}
    torch.save({**checkpoint, "amp_scaler": scaler_state}, tmp_path / "amp.pth.tar")
    model = timm.create_model("SegMANEncoder_t")
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    model_ema = timm.utils.ModelEmaV3(model, decay=0.99984)
    scaler = timm.utils.NativeScaler(device="cpu")
    epoch = train.resume_checkpoint(str(tmp_path / "amp.pth.tar"), model, optimizer, scaler, model_ema,
                                    "SegMANEncoder_t")
    assert epoch == checkpoint["epoch"] + 1
    assert scaler.state_dict() == scaler_state
    assert all(torch.equal(v, checkpoint["state_dict_ema"][k]) for k, v in model_ema.module.state_dict().items())
    assert optimizer.state_dict()["state"].keys() == checkpoint["optimizer"]["state"].keys()


def test_scripts_train_distributed_and_validate(synthetic_root, tmp_path):
    """scripts/train_segman-t.sh with 2 CPU processes (torchrun, gloo; one step each), then scripts/validate.sh."""
    proc = run("bash", str(SCRIPTS / "train_segman-t.sh"), "2", str(synthetic_root), "--batch-size", "2",
               "--workers", "0", "--epochs", "1", "--cooldown-epochs", "0", "--warmup-epochs", "0",
               "--output", str(tmp_path), "--no-progress")
    out = proc.stdout
    assert "2 process(es) × 2 = 4 per step" in out and "lr 3.91e-06" in out  # 1e-3 · 4 / 1024
    assert out.count("epoch 0/0:") == 1 and "images/s" in out  # one log line (rank 0)
    experiment = tmp_path / "SegMANEncoder_t-224"
    checkpoint = load_checkpoint_file(experiment / "checkpoints_ema" / "last.pth.tar")
    assert not [k for k in checkpoint["state_dict_ema"] if k.startswith("module.")]
    assert checkpoint["args"].world_size == 2 and checkpoint["args"].distributed

    results_file = tmp_path / "results.json"
    run("bash", str(SCRIPTS / "validate.sh"), "SegMANEncoder_t", str(experiment / "checkpoints_ema" / "last.pth.tar"),
        str(synthetic_root), "--use-ema", "--workers", "0", "--no-progress", "--results-file", str(results_file))
    results = json.loads(results_file.read_text())
    row = _summary(experiment)[0]
    assert results["top1"] == pytest.approx(float(row["eval_ema_top1"]), abs=1e-3)


def test_resume_falls_back_past_a_damaged_last_checkpoint(interrupted, tmp_path, capsys):
    """A run killed while writing ``last``: resume warns, names the file, and takes ``checkpoint-0``."""
    _, stopped_experiment, stopped = interrupted
    folder = tmp_path / "checkpoints"
    shutil.copytree(stopped_experiment / "checkpoints", folder)
    last = folder / "last.pth.tar"
    data = last.read_bytes()
    last.unlink()  # a new file: checkpoint-0 may be a hard link to the old one
    last.write_bytes(data[:len(data) // 3])
    model = timm.create_model("SegMANEncoder_t")
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    model_ema = timm.utils.ModelEmaV3(model, decay=0.99984)
    assert train.resume_checkpoint(str(last), model, optimizer, None, model_ema, "SegMANEncoder_t") == 1
    err = capsys.readouterr().err
    assert "last.pth.tar' is not a readable checkpoint" in err and "checkpoint-0.pth.tar" in err
    assert all(torch.equal(v, stopped[1]["model"][k]) for k, v in model.state_dict().items())


def test_an_interrupted_save_keeps_the_previous_last_checkpoint(tmp_path, monkeypatch):
    model = timm.create_model("SegMANEncoder_t", num_classes=2)
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3)
    saver = train.AtomicCheckpointSaver(model, optimizer, checkpoint_dir=str(tmp_path), max_history=2)
    saver.save_checkpoint(0, metric=1.0)
    real_save = torch.save

    def killed(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(b"PK\x03\x04 half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        saver.save_checkpoint(1, metric=2.0)
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint_file(tmp_path / "last.pth.tar")["epoch"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-0.pth.tar", "last.pth.tar",
                                                          "model_best.pth.tar"]


def test_a_diverging_run_stops_before_saving(synthetic_root, tmp_path):
    argv = train_argv(synthetic_root, tmp_path, "--lr", "1e6", "--warmup-epochs", "0", "--clip-grad", "0",
                      "--log-interval", "1")
    with pytest.raises(FloatingPointError, match=r"training stopped in epoch 0: the loss is not finite since step"):
        train.main(argv)
    assert not list(tmp_path.rglob("*.pth.tar"))
