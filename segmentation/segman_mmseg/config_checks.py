"""Checks that turn common config mistakes into clear messages before any work starts."""
from __future__ import annotations

import difflib
import logging
import os.path as osp

from mmcv.utils import Config

# Top-level keys that mmseg 0.30 and our tools read; a close misspelling of one is reported.
KNOWN_TOP_LEVEL_KEYS = (
    'model', 'data', 'optimizer', 'optimizer_config', 'lr_config', 'runner', 'checkpoint_config',
    'evaluation', 'log_config', 'dist_params', 'log_level', 'load_from', 'resume_from', 'workflow',
    'cudnn_benchmark', 'custom_imports', 'work_dir', 'gpu_ids', 'seed', 'device', 'fp16',
    'find_unused_parameters', 'auto_resume', 'norm_cfg', 'dataset_type', 'data_root',
    'img_norm_cfg', 'crop_size', 'train_pipeline', 'test_pipeline', 'mp_start_method',
    'opencv_num_threads')

# Total batch (GPUs × samples per GPU) of the paper's recipes (docs/model.md §8.1).
PAPER_TOTAL_BATCH = {'ADE20KDataset': 16, 'COCOStuffDataset': 16, 'CityscapesDataset': 8}


def load_config(path: str, options: dict | None = None) -> Config:
    """The config at ``path`` with the ``--cfg-options`` overrides ``options`` merged in; a missing
    file is a clear error (mmcv's names neither the working directory nor the fix)."""
    if not osp.isfile(path):
        raise FileNotFoundError(f"config file '{path}' does not exist (relative to {osp.abspath('.')}); "
                                f"configs are under segmentation/local_configs/")
    cfg = Config.fromfile(path)
    if options:
        cfg.merge_from_dict(options)
    return cfg


def _unwrap(dataset_cfg: dict) -> dict:
    """The innermost dataset config of RepeatDataset / ConcatDataset-style wrappers."""
    while 'dataset' in dataset_cfg:
        dataset_cfg = dataset_cfg['dataset']
    return dataset_cfg


def check_data_roots(cfg: Config, splits: tuple[str, ...]) -> None:
    """Raise FileNotFoundError naming the missing folder and how to fix it."""
    for split in splits:
        if split not in cfg.data:
            continue
        ds = _unwrap(cfg.data[split])
        root = ds.get('data_root') or ''
        for key in ('img_dir', 'ann_dir'):
            if ds.get(key) is None:
                continue
            path = osp.join(root, ds[key])
            if not osp.isdir(path):
                raise FileNotFoundError(
                    f"{ds.get('type', 'dataset')} ({split} split): {key} '{path}' does not exist "
                    f"(data_root='{root}', relative to {osp.abspath('.')}). Prepare the dataset as the "
                    f"README's 'Datasets' section shows, or point the config at it, e.g. "
                    f"--cfg-options data.{split}.data_root=/path/to/dataset")


def reject_misspelled_keys(cfg: Config) -> None:
    """ValueError for a top-level key that looks like a typo of a key mmseg reads: as written it would
    be ignored (``optimzer.lr=...`` would train at the config's rate)."""
    for key in cfg.keys():
        if key in KNOWN_TOP_LEVEL_KEYS or key.startswith('_'):
            continue
        close = difflib.get_close_matches(key, KNOWN_TOP_LEVEL_KEYS, n=1, cutoff=0.8)
        if close:
            raise ValueError(f"config key '{key}' is not used by mmseg; did you mean '{close[0]}'? "
                             f"As written it would be ignored")


# (dotted key, type, smallest value): settings whose wrong type would fail deep inside mmcv or torch
TYPED_KEYS = (('runner.max_iters', int, 1), ('runner.max_epochs', int, 1), ('data.samples_per_gpu', int, 1),
              ('data.workers_per_gpu', int, 0), ('optimizer.lr', (int, float), 0),
              ('optimizer.weight_decay', (int, float), 0), ('checkpoint_config.interval', int, 1),
              ('evaluation.interval', int, 1), ('log_config.interval', int, 1))


def _lookup(cfg: Config, dotted: str):
    value = cfg
    for part in dotted.split('.'):
        try:
            value = value[part]
        except (KeyError, TypeError):
            return None
    return value


def check_value_types(cfg: Config) -> None:
    """TypeError / ValueError naming a setting of the wrong type or range, and the crop sizes of the
    pipelines (two positive integers)."""
    for key, kind, least in TYPED_KEYS:
        value = _lookup(cfg, key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, kind):
            raise TypeError(f"config key {key} must be {'an integer' if kind is int else 'a number'}, "
                            f"got {value!r} ({type(value).__name__}); e.g. --cfg-options {key}={max(least, 1)}")
        if value < least:
            raise ValueError(f"config key {key} must be at least {least}, got {value}")
    for split in ('train', 'val', 'test'):
        pipeline = _unwrap(_lookup(cfg, f'data.{split}') or {}).get('pipeline', [])
        for i, step in enumerate(_flatten(pipeline)):
            size = step.get('crop_size')
            if size is not None and not (isinstance(size, (list, tuple)) and len(size) == 2
                                         and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                 for v in size)):
                raise TypeError(f"data.{split}.pipeline step {i} ({step.get('type')}): crop_size must be two "
                                f"positive integers (height, width), got {size!r}")


def _flatten(pipeline):
    """The steps of a pipeline, with those nested in ``MultiScaleFlipAug``-style wrappers."""
    for step in pipeline:
        yield step
        yield from _flatten(step.get('transforms', []))


def check_config(cfg: Config, training: bool) -> None:
    """Everything that can be checked before building models and data loaders."""
    reject_misspelled_keys(cfg)
    check_value_types(cfg)
    check_data_roots(cfg, ('train', 'val') if training else ('test',))


def report_batch_size(cfg: Config, world_size: int, logger: logging.Logger) -> int:
    """Log the total batch and warn when it differs from the paper's recipe; returns the total."""
    per_gpu = cfg.data.samples_per_gpu
    total = per_gpu * world_size
    if total == 1:
        raise ValueError("a total batch of 1 image cannot train the decoder: its image-pool BatchNorm sees one "
                         "value per channel.  Use data.samples_per_gpu >= 2, or several GPUs (SyncBN spans them)")
    dataset_type = _unwrap(cfg.data.train).get('type')
    logger.info(f"total batch size: {total} ({world_size} process(es) × {per_gpu} samples)")
    expected = PAPER_TOTAL_BATCH.get(dataset_type)
    if expected is not None and total != expected:
        logger.warning(
            f"total batch size {total} differs from the paper's {expected} for {dataset_type}: "
            f"results will not match the released models. Use GPUs × data.samples_per_gpu = {expected} "
            f"(e.g. 4 GPUs × {expected // 4}, or --cfg-options data.samples_per_gpu={expected // world_size} "
            f"if it fits in memory).")
    return total


def reject_unknown_arguments(owner: str, kwargs: dict, accepted: tuple[str, ...]) -> None:
    """TypeError naming each unknown config key of ``owner`` with the closest valid spelling."""
    unknown = [k for k in kwargs if k not in accepted]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, accepted, n=1, cutoff=0.6)
        hints.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ''))
    raise TypeError(f"{owner} got unknown config key(s) {', '.join(hints)}; valid keys: {', '.join(sorted(accepted))}")
