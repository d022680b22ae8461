"""Checks that turn common config mistakes into clear messages before any work starts."""
from __future__ import annotations

import difflib
import logging
import os.path as osp
import warnings

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


def warn_misspelled_keys(cfg: Config) -> None:
    """Warn about top-level keys that look like typos of keys mmseg reads (they would be ignored)."""
    for key in cfg.keys():
        if key in KNOWN_TOP_LEVEL_KEYS or key.startswith('_'):
            continue
        close = difflib.get_close_matches(key, KNOWN_TOP_LEVEL_KEYS, n=1, cutoff=0.8)
        if close:
            warnings.warn(f"config key '{key}' is not used by mmseg; did you mean '{close[0]}'?")


def check_config(cfg: Config, training: bool) -> None:
    """Everything that can be checked before building models and data loaders."""
    warn_misspelled_keys(cfg)
    check_data_roots(cfg, ('train', 'val') if training else ('test',))


def report_batch_size(cfg: Config, world_size: int, logger: logging.Logger) -> int:
    """Log the total batch and warn when it differs from the paper's recipe; returns the total."""
    per_gpu = cfg.data.samples_per_gpu
    total = per_gpu * world_size
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
