"""Training data and random numbers that a resumed run continues exactly, for mmcv's ``IterBasedRunner``.

:func:`install` (run when ``segman_mmseg`` is imported) changes the training data loader that
``mmseg.apis.train_segmentor`` builds whenever the run has a seed (``tools/train.py`` always sets one):

* **Data order from (seed, epoch) only**: :class:`EpochSampler` draws epoch ``e``'s permutation from
  a generator seeded with ``(seed, e)``; in distributed runs each rank takes every world-size-th
  sample of it, as mmseg's ``DistributedSampler`` does, with rank 0's seed.
* **Augmentation from (seed, epoch, position)**: :class:`SeededSamples` seeds ``random``,
  ``numpy.random`` and ``torch`` for each sample from its epoch and position in the epoch's order,
  so the random crops and flips do not depend on the worker count or on where a run was resumed;
  the caller's random states are put back afterwards (with ``workers_per_gpu=0`` the samples load
  in the training process, whose dropout and drop-path draw from the same generators).
* Data loaders draw their worker seeds from their own generator, not from the global torch one.

Resuming
--------
Each checkpoint's ``meta['resume_state']`` records the data epoch, the samples of it consumed (per
process), the seed, the world size, the per-process batch size and the global random states of
``torch`` (CPU and each CUDA device), ``numpy`` and ``random``.  ``--resume-from`` and
``--auto-resume`` restore the random states and start the data at the next unconsumed batch of
the same epoch: the sampler skips the consumed indices, nothing is loaded twice.  On the CPU a
resumed run then ends with weights and optimizer state bit-identical to an uninterrupted one with
the same seed and threads, whatever ``workers_per_gpu`` either used.

It cannot be exact, and the resume logs a warning saying why, when the checkpoint records no
resume state (written before this), when the seed, world size or ``samples_per_gpu`` differ from
the checkpoint's (the epoch's order is then split into other batches), when the number of CUDA
devices differs (their random states cannot all be restored), and on GPUs unless
``torch.use_deterministic_algorithms(True)`` is on: kernels that accumulate with atomic adds
(e.g. the backward of interpolation and of indexing) sum in a varying order, so even two
uninterrupted runs differ in the last bits.  Without ``--seed`` each run draws a new seed, so pass
the first run's seed (it is in the log and the checkpoint's ``meta['seed']``) when resuming.
"""
from __future__ import annotations

import contextlib
import functools
import numbers
import random
from typing import Iterator, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from mmcv.runner import get_dist_info
from mmseg.datasets.samplers import DistributedSampler

RESUME_STATE = "resume_state"


class SampleKey(NamedTuple):
    """What :class:`EpochSampler` yields and :class:`SeededSamples` reads: a dataset index, the data
    epoch and the sample's position in that epoch's order (counted over all processes)."""
    index: int
    epoch: int
    position: int


def derived_seed(*entropy: int) -> int:
    """A 64-bit seed mixed from non-negative integers (numpy's SeedSequence: (1, 0) and (0, 1) differ)."""
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


class EpochSampler(DistributedSampler):
    """mmseg's ``DistributedSampler`` (one process by default) whose order for epoch ``e`` comes from a
    generator seeded with ``(seed, e)``, which yields :class:`SampleKey` s and can start mid-epoch.

    Args:
        dataset: the training set.
        seed: a non-negative integer, the run's seed (distributed: rank 0's is used on every rank).
        num_replicas, rank: the world size and this process's rank.
    """

    def __init__(self, dataset: Dataset, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"EpochSampler: the seed must be a non-negative integer, got {seed!r}")
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=int(seed))
        self.skip = 0

    def start_at(self, epoch: int, samples_done: int) -> None:
        """Make the next iteration yield epoch ``epoch`` from this process's sample ``samples_done`` on."""
        if not 0 <= samples_done <= self.num_samples:
            raise ValueError(f"EpochSampler.start_at: samples_done={samples_done} is outside this process's "
                             f"{self.num_samples} samples per epoch")
        self.set_epoch(epoch)
        self.skip = samples_done

    def __iter__(self) -> Iterator[SampleKey]:
        generator = torch.Generator().manual_seed(derived_seed(self.seed, self.epoch))
        order = torch.randperm(len(self.dataset), generator=generator).tolist()
        order = (order * -(-self.total_size // len(order)))[:self.total_size]  # equal shares, as mmseg pads
        positions = range(self.rank + self.skip * self.num_replicas, self.total_size, self.num_replicas)
        self.skip = 0  # only the first epoch after start_at begins late
        return iter([SampleKey(order[p], self.epoch, p) for p in positions])


@contextlib.contextmanager
def seeded_global_rngs(seed: int):
    """Seed ``random``, ``numpy.random`` and torch's CPU generator from ``seed`` inside the block, and put
    the states they had back afterwards."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    streams = np.random.SeedSequence(seed).generate_state(3, np.uint32)
    with torch.random.fork_rng(devices=[]):
        random.seed(int(streams[0]))
        np.random.seed(int(streams[1]))
        torch.manual_seed(int(streams[2]))
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class SeededSamples(Dataset):
    """A map-style dataset read with :class:`SampleKey` s: each sample's transforms draw their random
    numbers from ``(seed, epoch, position)``; other attributes are the wrapped dataset's."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey):
        with seeded_global_rngs(derived_seed(self.seed, key.epoch, key.position)):
            return self.dataset[key.index]

    def __getattr__(self, name: str):
        if name == "dataset":  # not set yet (unpickling in a worker): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


def build_dataloader(dataset, samples_per_gpu: int, workers_per_gpu: int, num_gpus: int = 1, dist: bool = True,
                     shuffle: bool = True, seed=None, drop_last: bool = False, pin_memory: bool = True,
                     persistent_workers: bool = True, **kwargs) -> DataLoader:
    """mmseg's ``build_dataloader``, with an :class:`EpochSampler` over :class:`SeededSamples` when it shuffles
    with a seed, and the loader's own generator for its worker seeds."""
    from mmseg.datasets import builder
    from mmseg.datasets.builder import collate, worker_init_fn

    if seed is not None:
        kwargs.setdefault("generator", torch.Generator().manual_seed(derived_seed(seed)))
    if not shuffle or seed is None or isinstance(dataset, IterableDataset):
        return builder.build_dataloader(dataset, samples_per_gpu, workers_per_gpu, num_gpus, dist, shuffle, seed,
                                        drop_last, pin_memory, persistent_workers, **kwargs)
    rank, world_size = get_dist_info() if dist else (0, 1)
    sampler = EpochSampler(dataset, seed, num_replicas=world_size, rank=rank)
    processes_gpus = 1 if dist else num_gpus  # mmseg: one loader for all GPUs outside distributed runs
    num_workers = processes_gpus * workers_per_gpu
    return DataLoader(SeededSamples(dataset, sampler.seed), batch_size=processes_gpus * samples_per_gpu,
                      sampler=sampler, num_workers=num_workers,
                      collate_fn=functools.partial(collate, samples_per_gpu=samples_per_gpu), pin_memory=pin_memory,
                      worker_init_fn=functools.partial(worker_init_fn, num_workers=num_workers, rank=rank, seed=seed),
                      drop_last=drop_last, persistent_workers=persistent_workers, **kwargs)


def _iter_loader_class():
    """mmcv's ``IterLoader`` extended to start at its sampler's epoch and count the samples it consumed."""
    from mmcv.runner.iter_based_runner import IterLoader

    class PositionedIterLoader(IterLoader):
        """mmcv's ``IterLoader`` that knows its place: ``epoch`` and ``samples_done`` in it (this process)."""

        def __init__(self, dataloader: DataLoader) -> None:
            self.samples_done = getattr(dataloader.sampler, "skip", 0)
            super().__init__(dataloader)
            self._epoch = getattr(dataloader.sampler, "epoch", 0)

        def __next__(self):
            epoch = self._epoch
            data = super().__next__()
            self.samples_done = (0 if self._epoch != epoch else self.samples_done) + self._dataloader.batch_size
            return data

    PositionedIterLoader._segman_positioned = True
    return PositionedIterLoader


def global_rng_states() -> dict:
    """The global random states as tensors and plain numbers (they pass ``torch.load(weights_only=True)``)."""
    _, key, pos, has_gauss, gauss = np.random.get_state()
    states = dict(torch=torch.get_rng_state(), python=random.getstate(),
                  numpy=dict(key=torch.from_numpy(key.astype(np.int64)), pos=int(pos), has_gauss=int(has_gauss),
                             gauss=float(gauss)))
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_global_rng_states(states: dict, logger) -> None:
    """Set the states :func:`global_rng_states` returned (CUDA's only for the same number of devices)."""
    torch.set_rng_state(states["torch"].cpu())
    random.setstate(states["python"])
    numpy = states["numpy"]
    np.random.set_state(("MT19937", numpy["key"].cpu().numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["gauss"]))
    saved_cuda = states.get("cuda", [])
    if torch.cuda.is_available() and len(saved_cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in saved_cuda])
    elif torch.cuda.is_available() or saved_cuda:
        logger.warning(f"resume is not exact: the checkpoint has random states of {len(saved_cuda)} CUDA devices, "
                       f"this machine {torch.cuda.device_count() if torch.cuda.is_available() else 0}")


def _train_loader(runner):
    """The data loader the runner's current training iteration reads (an IterLoader), or None."""
    loader = getattr(runner, "data_loader", None)
    return loader if getattr(loader, "_segman_positioned", False) and runner.mode == "train" else None


def _save_resume_state(save_checkpoint):
    """Wrap ``IterBasedRunner.save_checkpoint`` to record :data:`RESUME_STATE` in the meta (module docstring)."""
    @functools.wraps(save_checkpoint)
    def wrapper(self, out_dir, filename_tmpl="iter_{}.pth", meta=None, *args, **kwargs):
        loader = _train_loader(self)
        if loader is not None and isinstance(loader._dataloader.sampler, EpochSampler):
            sampler = loader._dataloader.sampler
            meta = {**(meta or {}), RESUME_STATE: dict(
                epoch=loader.epoch, samples_done=loader.samples_done, seed=sampler.seed,
                world_size=sampler.num_replicas, batch_size=loader._dataloader.batch_size,
                rng=global_rng_states())}
        return save_checkpoint(self, out_dir, filename_tmpl, meta, *args, **kwargs)

    return wrapper


def _remember_resume_state(resume):
    """Wrap ``IterBasedRunner.resume`` to restore the random states and keep the data position for ``run``."""
    @functools.wraps(resume)
    def wrapper(self, checkpoint, *args, **kwargs):
        load_checkpoint = self.load_checkpoint
        loaded = {}

        def load_and_keep_meta(*load_args, **load_kwargs):
            result = load_checkpoint(*load_args, **load_kwargs)
            loaded.update(result.get("meta", {}))
            return result

        self.load_checkpoint = load_and_keep_meta
        try:
            resume(self, checkpoint, *args, **kwargs)
        finally:
            del self.load_checkpoint  # the class's method again
        state = loaded.get(RESUME_STATE)
        self._segman_resume_state = state
        if state is None:
            self.logger.warning(f"resume is not exact: {checkpoint} records no data position or random states, so "
                                f"the data starts a new epoch and the augmentation and dropout draw other numbers")
            return
        restore_global_rng_states(state["rng"], self.logger)
        if torch.cuda.is_available() and not torch.are_deterministic_algorithms_enabled():
            self.logger.warning("resume is exact up to GPU kernels that accumulate with atomic adds: without "
                                "torch.use_deterministic_algorithms(True) the weights differ from an "
                                "uninterrupted run's in the last bits, and those differences grow")

    return wrapper


def _run_from_resume_state(run):
    """Wrap ``IterBasedRunner.run`` to start the training data where the resumed checkpoint's run stopped."""
    @functools.wraps(run)
    def wrapper(self, data_loaders, workflow, *args, **kwargs):
        state = getattr(self, "_segman_resume_state", None)
        train = [loader for loader, (mode, _) in zip(data_loaders, workflow) if mode == "train"]
        if state is not None and train and isinstance(train[0].sampler, EpochSampler):
            _start_where_saved(train[0], state, self.logger)
        return run(self, data_loaders, workflow, *args, **kwargs)

    return wrapper


def _start_where_saved(loader: DataLoader, state: dict, logger) -> None:
    """Point ``loader``'s sampler at the checkpoint's next unconsumed batch; warn where that cannot be exact."""
    sampler = loader.sampler
    now = dict(seed=sampler.seed, world_size=sampler.num_replicas, batch_size=loader.batch_size)
    changed = [f"{k} {state[k]} -> {v}" for k, v in now.items() if state[k] != v]
    if changed:
        logger.warning(f"resume is not exact: {', '.join(changed)} since the checkpoint (batch_size is "
                       f"samples_per_gpu times the GPUs of one process), so the remaining batches differ")
    epoch, samples_done = state["epoch"], min(state["samples_done"], sampler.num_samples)
    if sampler.num_samples - samples_done < (loader.batch_size if loader.drop_last else 1):
        epoch, samples_done = epoch + 1, 0  # the epoch is used up: the next batch is the next epoch's first
    sampler.start_at(epoch, samples_done)
    logger.info(f"training data continues at epoch {epoch}, sample {samples_done} of {sampler.num_samples} "
                f"(this process)")


def install() -> None:
    """The seeded training loader in ``train_segmentor``, and the resume state in ``IterBasedRunner`` (idempotent)."""
    import mmcv.runner.iter_based_runner as iter_runner
    import mmseg.apis.train as mmseg_train
    from mmcv.runner import IterBasedRunner

    from .compat import _patch_method

    mmseg_train.build_dataloader = build_dataloader
    if not getattr(iter_runner.IterLoader, "_segman_positioned", False):
        iter_runner.IterLoader = _iter_loader_class()
    _patch_method(IterBasedRunner, "save_checkpoint", _save_resume_state)
    _patch_method(IterBasedRunner, "resume", _remember_resume_state)
    _patch_method(IterBasedRunner, "run", _run_from_resume_state)
