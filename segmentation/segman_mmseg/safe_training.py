"""Training that survives kills and stops on divergence, for mmcv's runners.

* **Crash-safe checkpoints**: the runners' ``save_checkpoint`` writes each ``iter_N.pth`` through
  :func:`segman.models.checkpoint.atomic_path` (a temporary file, fsync, rename), so a kill at any
  moment leaves complete files only, and ``latest.pth`` is moved only after the file is complete.
* **Resume that skips bad files**: ``--auto-resume`` takes the newest checkpoint that loads
  (``latest.pth``, then ``iter_N.pth`` / ``epoch_N.pth`` by number), naming each one it skips.
* **Stop on non-finite values**: :class:`StopOnNonFinite` (a hook that ``tools/train.py`` adds)
  ends training with an error naming the iteration and the loss terms as soon as the loss, or the
  weights after a step, are not finite; it runs before the checkpoint hook, so no checkpoint with
  NaN weights is written and the last good one stays the newest.
"""
from __future__ import annotations

import functools
import os
import os.path as osp
import re
from typing import Optional

import torch
from mmcv.runner import HOOKS, Hook

from segman.models.checkpoint import CheckpointError, atomic_path, checkpoints_newest_first, newest_loadable

# between OptimizerHook (40: backward and step) and CheckpointHook (50)
NON_FINITE_PRIORITY = 45
_TEMPORARY = re.compile(r"^\..+\.pth\..+\.tmp$")


def _atomic_save(save_checkpoint):
    """Wrap mmcv's ``save_checkpoint(model, filename, ...)`` to write local files atomically."""
    @functools.wraps(save_checkpoint)
    def wrapper(model, filename, *args, **kwargs):
        if "://" in str(filename):  # a remote file client: left to mmcv
            return save_checkpoint(model, filename, *args, **kwargs)
        with atomic_path(filename) as tmp:
            return save_checkpoint(model, tmp, *args, **kwargs)
    wrapper._segman_atomic = True
    return wrapper


def run_checkpoints(work_dir: str, suffix: str = "pth") -> list[str]:
    """mmcv's checkpoints in ``work_dir``, newest first: ``latest``, then ``…iter_N`` / ``…epoch_N`` by N."""
    return checkpoints_newest_first(work_dir, f"latest.{suffix}", rf".*(?:iter|epoch)_(\d+)\.{suffix}")


def newest_good_checkpoint(work_dir: str, suffix: str = "pth") -> Optional[str]:
    """What ``--auto-resume`` resumes from: the newest checkpoint that loads (module docstring).

    Leftover temporaries of interrupted saves are removed.  Returns None for a folder without
    checkpoints; raises :class:`CheckpointError` if there are checkpoints but none loads.
    """
    if not osp.isdir(work_dir):
        return None
    for name in os.listdir(work_dir):
        if _TEMPORARY.match(name):
            os.unlink(osp.join(work_dir, name))
    candidates = run_checkpoints(work_dir, suffix)
    if not candidates:
        return None
    good = newest_loadable(candidates)
    if good is None:
        raise CheckpointError(f"--auto-resume: none of the checkpoints in {work_dir} can be read "
                              f"({', '.join(map(osp.basename, candidates))}); move them away to start afresh, "
                              f"or pass --resume-from with a good copy")
    return good


@HOOKS.register_module()
class StopOnNonFinite(Hook):
    """Ends training when the loss or the weights after a step are not finite (module docstring)."""

    def after_train_iter(self, runner) -> None:
        log_vars = runner.outputs.get("log_vars", {})
        terms = ", ".join(f"{k}={v:.4g}" for k, v in log_vars.items() if isinstance(v, float))
        loss = runner.outputs["loss"]
        if not torch.isfinite(loss.detach()).all():
            self._stop(runner, f"the loss is {loss.item()} ({terms})")
        params = [p.detach() for p in runner.model.parameters()]
        if params and not torch.isfinite(torch.stack(torch._foreach_norm(params))).all():
            bad = next(name for name, p in runner.model.named_parameters() if not torch.isfinite(p).all())
            self._stop(runner, f"the step made weights non-finite (first: {bad}; loss terms: {terms})")

    @staticmethod
    def _stop(runner, what: str) -> None:
        saved = run_checkpoints(runner.work_dir)
        kept = (f"the newest checkpoint, {osp.realpath(saved[0])}, is from before" if saved
                else "no checkpoint was written")
        raise FloatingPointError(
            f"training stopped at iteration {runner.iter + 1}: {what}; {kept}.  Lower the learning rate "
            f"(--cfg-options optimizer.lr=...), clip gradients (optimizer_config.grad_clip=dict(max_norm=...)), "
            f"or train in bf16 or fp32 rather than fp16")


def install() -> None:
    """Atomic checkpoint writes in both mmcv runners and the validating ``--auto-resume`` (idempotent)."""
    import mmcv.runner.epoch_based_runner as epoch_runner
    import mmcv.runner.iter_based_runner as iter_runner
    import mmseg.apis.train as mmseg_train

    for module in (iter_runner, epoch_runner):
        if not getattr(module.save_checkpoint, "_segman_atomic", False):
            module.save_checkpoint = _atomic_save(module.save_checkpoint)
    mmseg_train.find_latest_checkpoint = newest_good_checkpoint
