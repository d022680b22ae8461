"""Run-time fixes that let mmcv-full 1.7.2 and mmseg 0.30 work on current torch.

Nothing in site-packages is edited: each fix replaces one mmcv attribute when ``segman_mmseg`` is
imported, and each has a test in ``tests/segmentation/test_compat.py``.  Fixes:

1. Scatter crash on torch >= 2.1 (GPU training): mmcv's ``Scatter.forward`` passes an int GPU
   index to ``torch.nn.parallel._functions._get_stream``, which now expects a ``torch.device``
   (``AttributeError: 'int' object has no attribute 'type'``).
2. ``torch.load`` defaults to ``weights_only=True`` since torch 2.6, and mmcv checkpoints carry
   numpy scalars in their ``meta`` (e.g. ``hook_msgs.best_score``), so resuming failed with
   ``UnpicklingError``.  mmcv's local checkpoint loader is replaced by one that keeps
   ``weights_only=True`` with numpy scalars/arrays allow-listed, and explains how to opt in to
   full unpickling (``SEGMAN_ALLOW_UNSAFE_CHECKPOINTS=1``) for files that need it.
3. Resuming on a machine without CUDA: the runners' ``resume(map_location='default')`` calls
   ``torch.cuda.current_device()`` (``RuntimeError: Found no NVIDIA driver``); without CUDA
   'default' now means 'cpu'.
4. Resuming repeated one iteration: ``IterBasedRunner`` saves from ``after_train_iter``, before
   its counter moves, so ``iter_N.pth`` records ``meta['iter'] = N - 1`` and ``resume`` re-ran
   iteration N (another batch, the learning rate one step behind).  Resume now continues at N + 1
   (with the data and random numbers where they were: :mod:`segman_mmseg.exact_resume`).
5. Segfault in ``collect_env()`` (train.py's first log line): ``mmcv.ops.get_compiler_version``
   calls into the compiled ``_ext``, which crashed a CPU-ops build for torch 2.11 / Python 3.12
   ("Fatal Python error: Segmentation fault ... mmcv/ops/info.py").  SegMAN uses no mmcv C++
   op, so the two version queries are answered in Python without touching ``_ext``.
6. Distributed evaluation crash on torch >= 2.0: ``MMDistributedDataParallel._run_ddp_forward``
   reads ``self._use_replicated_tensor_module``, an attribute torch's DDP no longer sets
   (``AttributeError`` in ``multi_gpu_test``).  The class gets the attribute's old default, False.
"""
from __future__ import annotations

import functools
import os.path as osp

import torch
from torch.nn.parallel import _functions as torch_parallel_functions


def _get_stream_accepting_index(device):
    """``_get_stream`` that also accepts the int GPU index mmcv passes (fix 1)."""
    if isinstance(device, int):
        device = torch.device('cuda', device)
    return torch_parallel_functions._get_stream(device)


def _load_local_checkpoint(filename: str, map_location=None):
    """mmcv's loader for plain file paths, with safe ``torch.load`` semantics (fix 2)."""
    from segman.models.checkpoint import load_checkpoint_file

    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename} does not exist')
    return load_checkpoint_file(filename, map_location=map_location)


def _patch_method(owner: type, name: str, make_wrapper) -> None:
    """Replace ``owner.name`` by ``make_wrapper(original)`` once, however often apply() runs."""
    original = owner.__dict__[name]
    applied = getattr(original, '_segman_fixes', ())
    if make_wrapper.__name__ in applied:
        return
    wrapper = make_wrapper(original)
    wrapper._segman_fixes = (*applied, make_wrapper.__name__)
    setattr(owner, name, wrapper)


def _resume_on_any_device(resume):
    """Wrap a runner's ``resume`` so that map_location='default' works without CUDA (fix 3)."""
    @functools.wraps(resume)
    def wrapper(self, checkpoint, resume_optimizer=True, map_location='default'):
        if map_location == 'default' and not torch.cuda.is_available():
            map_location = 'cpu'
        return resume(self, checkpoint, resume_optimizer, map_location)

    return wrapper


def _resume_after_saved_iteration(resume):
    """Wrap ``IterBasedRunner.resume`` to continue after the iteration the checkpoint completed (fix 4)."""
    @functools.wraps(resume)
    def wrapper(self, *args, **kwargs):
        resume(self, *args, **kwargs)
        self._iter += 1
        self._inner_iter = self._iter
        self.logger.info(f'continuing after the checkpoint\'s iteration {self.iter}')

    return wrapper


def _mmcv_compiler_version() -> str:
    """What ``collect_env`` reports for mmcv's compiler, without calling the compiled ``_ext`` (fix 5)."""
    return 'not queried (segman_mmseg.compat)'


def apply() -> None:
    """Install every fix (idempotent)."""
    import mmcv.parallel._functions as mmcv_parallel_functions
    from mmcv.runner import BaseRunner, IterBasedRunner
    from mmcv.runner.checkpoint import CheckpointLoader

    import mmcv.ops
    from mmcv.parallel import MMDistributedDataParallel

    if not hasattr(MMDistributedDataParallel, '_use_replicated_tensor_module'):
        MMDistributedDataParallel._use_replicated_tensor_module = False
    mmcv_parallel_functions._get_stream = _get_stream_accepting_index
    mmcv.ops.get_compiler_version = mmcv.ops.get_compiling_cuda_version = _mmcv_compiler_version
    for runner in (BaseRunner, IterBasedRunner):
        _patch_method(runner, 'resume', _resume_on_any_device)
    _patch_method(IterBasedRunner, 'resume', _resume_after_saved_iteration)
    CheckpointLoader.register_scheme(prefixes='', force=True)(_load_local_checkpoint)
