"""Train a SegMAN segmentor with mmseg 0.30 (same flags as mmseg's ``tools/train.py``).

    python tools/train.py local_configs/segman/base/segman_b_ade.py [--work-dir DIR] [--drop-path 0.25]
    bash tools/dist_train.sh CONFIG GPUS [...]          # distributed, through torchrun

Runs on CPU when no GPU is present.  Outside distributed runs SyncBN layers become BatchNorm;
in distributed runs every BatchNorm becomes SyncBN.
The resolved config, environment and seed are written to the work dir; logs go to text and
TensorBoard (``<work_dir>/tf_logs``).  Checkpoints are written atomically; ``--auto-resume`` continues
from the newest one that loads; a non-finite loss or weight stops training before it is saved.
Data order and augmentation follow the seed, so a resumed run continues exactly where the checkpoint's
stopped (:mod:`segman_mmseg.exact_resume`; pass the first run's ``--seed`` when resuming).
"""
from __future__ import annotations

import argparse
import copy
import os
import os.path as osp
import time

import mmcv
import torch
import torch.distributed as dist
from mmcv.cnn.utils import revert_sync_batchnorm
from mmcv.runner import get_dist_info, init_dist
from mmcv.utils import DictAction

import segman_mmseg  # noqa: F401  (registers SegMAN types, applies the mmcv compatibility fixes)
from segman.models import COMPILE_MODES, CheckpointError, compile_regions
from segman.models.cuda_graph import leave_to_graphs, release_graphs
from segman_mmseg.config_checks import check_config, load_config, report_batch_size
from segman_mmseg.safe_training import NON_FINITE_PRIORITY


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a SegMAN segmentor")
    parser.add_argument("config", help="config file, e.g. local_configs/segman/tiny/segman_t_ade.py")
    parser.add_argument("--work-dir", help="where logs and checkpoints go (default work_dirs/<config name>)")
    parser.add_argument("--load-from", help="checkpoint whose weights initialise the model")
    parser.add_argument("--resume-from", help="checkpoint to resume from (weights, optimizer, iteration)")
    parser.add_argument("--auto-resume", action="store_true", help="resume from the newest checkpoint in the work dir")
    parser.add_argument("--no-validate", action="store_true", help="skip evaluation during training")
    parser.add_argument("--gpu-id", type=int, default=0, help="GPU for non-distributed training")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random, logged)")
    parser.add_argument("--diff-seed", action="store_true", help="a different seed on each rank")
    parser.add_argument("--deterministic", action="store_true", help="deterministic cuDNN")
    parser.add_argument("--drop-path", type=float, default=None, help="backbone drop-path rate (overrides the config)")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="replay the backbone's forward and backward from CUDA graphs (SegMAN-S "
                             "steps 2.6x faster at 4 crops per GPU, see docs/performance.md)")
    parser.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                        choices=COMPILE_MODES,
                        help="torch.compile the SegMAN blocks (segman.models.compile_regions) with this "
                             "torch.compile mode (default: 'default'; 'reduce-overhead' replays CUDA graphs): "
                             "about 1.5x faster GPU steps after a first step that compiles; see docs/performance.md")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default=None,
                        help="override config keys, e.g. data.samples_per_gpu=2 runner.max_iters=1000")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def main() -> None:
    args = parse_args()
    from mmseg import __version__ as mmseg_version
    from mmseg.apis import init_random_seed, set_random_seed, train_segmentor
    from mmseg.datasets import build_dataset
    from mmseg.models import build_segmentor
    from mmseg.utils import collect_env, get_device, get_root_logger, setup_multi_processes

    cfg = load_config(args.config, args.cfg_options)
    if args.drop_path is not None:
        cfg.model.backbone.drop_path_rate = args.drop_path
    if args.cuda_graph:
        cfg.model.backbone.cuda_graph = True
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or osp.join(
        "work_dirs", osp.splitext(osp.basename(args.config))[0])
    if args.load_from:
        cfg.load_from = args.load_from
    if args.resume_from:
        cfg.resume_from = args.resume_from
    cfg.auto_resume = args.auto_resume
    if not any(h.get("type") == "StopOnNonFinite" for h in cfg.get("custom_hooks", [])):
        cfg.custom_hooks = [*cfg.get("custom_hooks", []), dict(type="StopOnNonFinite", priority=NON_FINITE_PRIORITY)]
    if cfg.get("runner", {}).get("type") == "EpochBasedRunner" and args.launcher == "none":
        # the seeded sampler reshuffles on set_epoch, which mmseg leaves to this hook
        cfg.custom_hooks = [*cfg.custom_hooks, dict(type="DistSamplerSeedHook")]
    cfg.gpu_ids = [args.gpu_id]
    cfg.find_unused_parameters = False  # every SegMAN parameter receives a gradient
    cfg.data.setdefault("persistent_workers", cfg.data.get("workers_per_gpu", 2) > 0)  # torch refuses it for 0
    if cfg.get("cudnn_benchmark", False):
        torch.backends.cudnn.benchmark = True

    distributed = args.launcher != "none"
    if distributed:
        init_dist(args.launcher, **cfg.dist_params)
        cfg.gpu_ids = list(range(get_dist_info()[1]))
    check_config(cfg, training=True)

    mmcv.mkdir_or_exist(osp.abspath(cfg.work_dir))
    cfg.dump(osp.join(cfg.work_dir, osp.basename(args.config)))
    timestamp = time.strftime("%Y%m%d_%H%M%S", time.localtime())
    logger = get_root_logger(log_file=osp.join(cfg.work_dir, f"{timestamp}.log"), log_level=cfg.log_level)
    setup_multi_processes(cfg)

    env_info = "\n".join(f"{k}: {v}" for k, v in collect_env().items())
    logger.info("Environment info:\n" + env_info)
    logger.info(f"Distributed training: {distributed}")
    if args.cuda_graph and not torch.cuda.is_available():
        logger.warning("--cuda-graph needs a GPU; training on the CPU runs eagerly")
    logger.info(f"Config:\n{cfg.pretty_text}")
    report_batch_size(cfg, world_size=get_dist_info()[1] if distributed else 1, logger=logger)

    cfg.device = get_device()
    seed = init_random_seed(args.seed, device=cfg.device)
    if args.diff_seed and distributed:
        seed += dist.get_rank()
    logger.info(f"Set random seed to {seed}, deterministic: {args.deterministic}")
    set_random_seed(seed, deterministic=args.deterministic)
    cfg.seed = seed
    meta = dict(env_info=env_info, seed=seed, exp_name=osp.basename(args.config))

    model = build_segmentor(cfg.model, train_cfg=cfg.get("train_cfg"), test_cfg=cfg.get("test_cfg"))
    model.init_weights()
    if distributed:  # the original converted its backbone BN in __init__; the trainer does it here
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if args.cuda_graph and torch.cuda.is_available():  # the backbone's graphs average its gradients, not DDP
            leave_to_graphs(model.cuda())
    else:
        model = revert_sync_batchnorm(model)  # SyncBN needs a process group
    if args.compile:
        compile_regions(model, mode=args.compile)
    logger.info(model)

    datasets = [build_dataset(cfg.data.train)]
    if len(cfg.workflow) == 2:
        val = copy.deepcopy(cfg.data.val)
        val.pipeline = cfg.data.train.pipeline
        datasets.append(build_dataset(val))
    if cfg.checkpoint_config is not None:
        cfg.checkpoint_config.meta = dict(mmseg_version=mmseg_version, config=cfg.pretty_text,
                                          CLASSES=datasets[0].CLASSES, PALETTE=datasets[0].PALETTE)
        meta.update(cfg.checkpoint_config.meta)
    model.CLASSES = datasets[0].CLASSES
    try:
        train_segmentor(model, datasets, cfg, distributed=distributed, validate=not args.no_validate,
                        timestamp=timestamp, meta=meta)
    except (FloatingPointError, CheckpointError) as e:  # divergence, no readable checkpoint
        logger.error(str(e))
        raise SystemExit(f"error: {e}") from None
    if torch.cuda.is_available():
        rank, world_size = get_dist_info()
        print(f"rank {rank}/{world_size} on {torch.cuda.get_device_name()}: training finished, "
              f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB", flush=True)
    release_graphs(model)  # before the process group goes: graphs may hold SyncBN's NCCL calls
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
