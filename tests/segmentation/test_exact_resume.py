"""Seeded data order and augmentation, and resume that continues bit-exactly (:mod:`segman_mmseg.exact_resume`),
as units and through ``tools/train.py`` on the toy set."""
from __future__ import annotations

import logging
import os
import random
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from segmentation_testing import SEGMENTATION, TOOLS, TOY, data_options, run_tool
from torch.utils.data import DataLoader

import segman_mmseg  # noqa: F401  (installs the seeded loader and the resume state)
from segman_mmseg.exact_resume import (EpochSampler, SampleKey, SeededSamples, _start_where_saved,
                                       global_rng_states, restore_global_rng_states)

LOGGER = logging.getLogger("test_exact_resume")


def test_the_order_depends_on_seed_and_epoch_only():
    data = list(range(20))
    first, again = EpochSampler(data, seed=3), EpochSampler(data, seed=3)
    torch.manual_seed(123)  # the global generator plays no part
    assert list(first) == list(again)
    assert sorted(key.index for key in first) == data
    assert [key.position for key in first] == list(range(20))
    other_epoch = EpochSampler(data, seed=3)
    other_epoch.set_epoch(1)
    assert [key.index for key in other_epoch] != [key.index for key in first]
    assert {key.epoch for key in other_epoch} == {1}
    assert [key.index for key in EpochSampler(data, seed=4)] != [key.index for key in first]


def test_start_at_skips_the_consumed_samples_once():
    sampler = EpochSampler(list(range(10)), seed=0)
    sampler.set_epoch(2)
    whole = list(sampler)
    sampler.start_at(2, 6)
    assert list(sampler) == whole[6:]
    assert list(sampler) == whole  # the next pass is a whole epoch again
    with pytest.raises(ValueError, match="samples_done=11 is outside"):
        sampler.start_at(2, 11)


def test_ranks_share_one_order_with_rank_zeros_seed():
    data = list(range(10))
    shares = [list(EpochSampler(data, seed=5, num_replicas=3, rank=r)) for r in range(3)]
    positions = sorted(key.position for share in shares for key in share)
    assert positions == list(range(12))  # padded to equal shares, as mmseg's DistributedSampler does
    assert {key.index for share in shares for key in share} == set(data)


@pytest.mark.parametrize("seed", [-1, 1.5, None, True])
def test_a_bad_seed_is_named(seed):
    with pytest.raises(ValueError, match=f"non-negative integer, got {seed!r}"):
        EpochSampler(list(range(4)), seed=seed)


class _RandomSample(torch.utils.data.Dataset):
    """Each item draws from random, numpy and torch, like a pipeline of random transforms."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return (index, random.random(), float(np.random.rand()), float(torch.rand(())))


def test_a_sample_draws_the_same_numbers_whatever_the_worker_or_global_state():
    samples = SeededSamples(_RandomSample(), seed=7)
    key = SampleKey(index=2, epoch=1, position=5)
    torch.manual_seed(0)
    before = global_rng_states()
    first = samples[key]
    after = global_rng_states()
    assert torch.equal(before["torch"], after["torch"]) and before["python"] == after["python"]
    assert torch.equal(before["numpy"]["key"], after["numpy"]["key"])  # the caller's streams are untouched
    random.seed(99)
    assert samples[key] == first
    assert samples[key._replace(position=6)] != first
    loader = DataLoader(samples, batch_size=2, sampler=EpochSampler(samples, seed=7), num_workers=1)
    in_worker = [row for batch in loader for row in zip(*[col.tolist() for col in batch])]
    in_process = [tuple(samples[key]) for key in EpochSampler(samples, seed=7)]
    assert in_worker == in_process


def test_random_states_round_trip():
    states = global_rng_states()
    expected = (random.random(), np.random.rand(), torch.rand(()))
    restore_global_rng_states(states, LOGGER)
    assert (random.random(), np.random.rand(), torch.rand(())) == expected


class _Loader:
    """What ``_start_where_saved`` reads of a DataLoader."""

    def __init__(self, batch_size):
        self.sampler = EpochSampler(list(range(8)), seed=0)
        self.batch_size, self.drop_last = batch_size, True


def test_a_used_up_epoch_resumes_at_the_next_and_changes_warn(caplog):
    state = dict(epoch=0, samples_done=8, seed=0, world_size=1, batch_size=2)
    loader = _Loader(batch_size=2)
    with caplog.at_level(logging.INFO, logger=LOGGER.name):
        _start_where_saved(loader, state, LOGGER)
    assert (loader.sampler.epoch, loader.sampler.skip) == (1, 0)
    assert "not exact" not in caplog.text
    loader = _Loader(batch_size=4)
    with caplog.at_level(logging.WARNING, logger=LOGGER.name):
        _start_where_saved(loader, dict(state, samples_done=2), LOGGER)
    assert "resume is not exact: batch_size 2 -> 4" in caplog.text
    assert (loader.sampler.epoch, loader.sampler.skip) == (0, 2)


def _state(checkpoint) -> dict:
    """Every tensor of a checkpoint's model and optimizer state, by name."""
    tensors = {f"model.{k}": v for k, v in checkpoint["state_dict"].items()}
    for param, values in checkpoint["optimizer"]["state"].items():
        tensors.update({f"optimizer.{param}.{k}": torch.as_tensor(v) for k, v in values.items()})
    return tensors


def test_a_killed_and_resumed_run_ends_bit_identical(toy_root, tmp_path):
    """4 iterations in one go (no workers) against a run killed after iteration 2's checkpoint and resumed to 4
    (one worker); with drop-path, head dropout and an evaluation after iteration 2."""
    args = [TOY, "--seed", "0", "--deterministic", "--drop-path", "0.1", "--cfg-options", *data_options(toy_root),
            "runner.max_iters=4", "checkpoint_config.interval=1", "checkpoint_config.max_keep_ckpts=-1",
            "evaluation.interval=2", "lr_config.warmup_iters=1"]
    whole, killed, resumed = tmp_path / "whole", tmp_path / "killed", tmp_path / "resumed"
    run_tool("train.py", *args, "--work-dir", str(whole))
    # run_tool's environment: one thread, so that both runs sum in the same order
    interrupted = subprocess.Popen([sys.executable, str(TOOLS / "train.py"), *args, "data.workers_per_gpu=1",
                                    "--work-dir", str(killed)], cwd=SEGMENTATION, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1",
                                                                       PYTHONWARNINGS="ignore"))
    try:
        while not (killed / "iter_2.pth").exists() and interrupted.poll() is None:
            time.sleep(0.05)
    finally:
        interrupted.kill()
        interrupted.wait()
    assert (killed / "iter_2.pth").exists(), "the interrupted run ended before its second checkpoint"
    resumed.mkdir()
    shutil.copy(killed / "iter_2.pth", resumed)  # the checkpoint the kill left, whatever it cut short after it
    proc = run_tool("train.py", *args, "data.workers_per_gpu=1", "--work-dir", str(resumed),
                    "--resume-from", str(resumed / "iter_2.pth"))
    assert "training data continues at epoch 0, sample 4 of 8" in proc.stderr + proc.stdout
    assert "not exact" not in proc.stderr + proc.stdout
    expected = _state(torch.load(whole / "iter_4.pth", weights_only=False))
    got = _state(torch.load(resumed / "iter_4.pth", weights_only=False))
    assert got.keys() == expected.keys()
    differing = [name for name in expected if not torch.equal(got[name], expected[name])]
    assert not differing, f"{len(differing)} of {len(expected)} tensors differ, first {differing[:5]}"
