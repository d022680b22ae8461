"""The run-time fixes of segman_mmseg.compat, one test per symptom."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import segman_mmseg  # noqa: F401  (applies the fixes)
from segman.models import CheckpointError


def test_scatter_get_stream_accepts_int_index(monkeypatch):
    """mmcv's Scatter passes an int GPU index; torch >= 2.1's _get_stream wants a torch.device."""
    import mmcv.parallel._functions as mmcv_functions
    from torch.nn.parallel import _functions as torch_functions

    seen = []
    monkeypatch.setattr(torch_functions, "_get_stream", lambda device: seen.append(device) or "stream")
    assert mmcv_functions._get_stream(1) == "stream"
    assert seen == [torch.device("cuda", 1)]
    mmcv_functions._get_stream(torch.device("cuda", 0))
    assert seen[-1] == torch.device("cuda", 0)


def test_scatter_on_cpu_targets_is_unchanged():
    """The CPU path (target_gpus=[-1], used by CPU training) never asks for a stream."""
    from mmcv.parallel._functions import Scatter

    x = torch.arange(6.0)
    (out,) = Scatter.forward([-1], x)
    assert torch.equal(out, x)


def _mmcv_like_checkpoint(path, extra_meta=None):
    model = torch.nn.Linear(3, 2)
    meta = dict(iter=4, hook_msgs=dict(best_score=np.float64(0.61), best_ckpt="best.pth"),
                PALETTE=np.array([[1, 2, 3]]), CLASSES=("a", "b"), **(extra_meta or {}))
    torch.save(dict(meta=meta, state_dict=model.state_dict(), optimizer={}), path)
    return model


def test_mmcv_load_checkpoint_reads_numpy_meta_with_weights_only(tmp_path):
    """torch.load defaults to weights_only=True since 2.6; mmcv meta holds numpy scalars/arrays."""
    from mmcv.runner import load_checkpoint

    path = tmp_path / "iter_4.pth"
    source = _mmcv_like_checkpoint(path)
    target = torch.nn.Linear(3, 2)
    ckpt = load_checkpoint(target, str(path), map_location="cpu", strict=True)
    assert ckpt["meta"]["hook_msgs"]["best_score"] == pytest.approx(0.61)
    assert torch.equal(target.weight, source.weight)


class _Arbitrary:
    pass


def test_mmcv_load_checkpoint_refuses_arbitrary_objects_without_opt_in(tmp_path, monkeypatch):
    from mmcv.runner import load_checkpoint

    path = tmp_path / "unsafe.pth"
    _mmcv_like_checkpoint(path, extra_meta=dict(obj=_Arbitrary()))
    monkeypatch.delenv("SEGMAN_ALLOW_UNSAFE_CHECKPOINTS", raising=False)
    with pytest.raises(CheckpointError, match="SEGMAN_ALLOW_UNSAFE_CHECKPOINTS"):
        load_checkpoint(torch.nn.Linear(3, 2), str(path), map_location="cpu")
    monkeypatch.setenv("SEGMAN_ALLOW_UNSAFE_CHECKPOINTS", "1")
    load_checkpoint(torch.nn.Linear(3, 2), str(path), map_location="cpu")


def test_missing_checkpoint_file_is_a_clear_error():
    from mmcv.runner import load_checkpoint

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(torch.nn.Linear(3, 2), "no/such/file.pth")


def test_resume_without_cuda_maps_to_cpu_and_continues_after_the_saved_iteration(monkeypatch):
    """mmcv's runners call torch.cuda.current_device() for map_location='default' (fix 3) and
    IterBasedRunner repeated the saved iteration (fix 4)."""
    from mmcv.runner import IterBasedRunner

    seen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(IterBasedRunner, "load_checkpoint",
                        lambda self, path, map_location: seen.append(map_location) or {"meta": {"epoch": 0, "iter": 3}})
    runner = IterBasedRunner.__new__(IterBasedRunner)
    runner._epoch = runner._iter = runner._inner_iter = 0
    runner.logger = __import__("logging").getLogger("test")
    runner.optimizer = None
    runner.resume("ckpt.pth", resume_optimizer=False)
    assert seen == ["cpu"]
    # iter_4.pth is saved inside iteration 4 with meta iter 3: continue with iteration 5
    assert runner.iter == 4 and runner.inner_iter == 4


def test_collect_env_does_not_call_the_compiled_version_query(monkeypatch):
    """mmcv.ops.get_compiler_version crashed (segfault) in a torch 2.11 / Python 3.12 build (fix 5)."""
    from mmcv.ops import info
    from mmcv.utils import collect_env

    def crash():
        raise AssertionError("the compiled _ext query must not be called")

    monkeypatch.setattr(info.ext_module, "get_compiler_version", crash, raising=False)
    monkeypatch.setattr(info.ext_module, "get_compiling_cuda_version", crash, raising=False)
    env = collect_env()
    assert env["MMCV Compiler"] == env["MMCV CUDA Compiler"] == "not queried (segman_mmseg.compat)"


def test_mmddp_has_the_attribute_its_forward_reads():
    """MMDistributedDataParallel._run_ddp_forward reads _use_replicated_tensor_module, gone from
    torch's DDP in 2.x: multi_gpu_test crashed with AttributeError (fix 6)."""
    from mmcv.parallel import MMDistributedDataParallel

    ddp = MMDistributedDataParallel.__new__(MMDistributedDataParallel)
    assert ddp._use_replicated_tensor_module is False
