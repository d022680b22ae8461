"""Evaluate a SegMAN checkpoint with mmseg 0.30 (same command line as mmseg's ``tools/test.py``).

    python tools/test.py CONFIG CHECKPOINT --eval mIoU [--show-dir DIR] [--out results.pkl] [--aug-test]
    bash tools/dist_test.sh CONFIG CHECKPOINT GPUS --eval mIoU
    python tools/test.py CONFIG model.onnx --eval mIoU    # a file of tools/pytorch2onnx.py, in onnxruntime

The checkpoint is loaded with every key matched (``backbone.*``, ``decode_head.*``); the
backbone's ImageNet ``pretrained`` path of the config is ignored.  Metrics are printed and saved
as JSON in the work dir.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import time

import mmcv
import torch
from mmcv.cnn.utils import revert_sync_batchnorm
from mmcv.runner import get_dist_info, init_dist, wrap_fp16_model
from mmcv.utils import DictAction

import segman_mmseg  # noqa: F401  (registers SegMAN types, applies the mmcv compatibility fixes)
from segman_mmseg.config_checks import check_config, load_config
from segman.models import COMPILE_MODES, compile_regions
from segman_mmseg.inference import build_segmentor_from_checkpoint
from segman_mmseg.loading import check_labels_when_evaluating

AUG_TEST_RATIOS = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluate a SegMAN segmentor")
    parser.add_argument("config", help="config file")
    parser.add_argument("checkpoint", help="checkpoint file (ours or the original's), or an exported .onnx file")
    parser.add_argument("--eval", nargs="+", help="metrics, e.g. mIoU mDice mFscore")
    parser.add_argument("--out", help="pickle the raw results to this file")
    parser.add_argument("--format-only", action="store_true", help="only format results (test-server submission)")
    parser.add_argument("--show-dir", help="write colour-coded predictions over the images to this folder")
    parser.add_argument("--opacity", type=float, default=0.5, help="opacity of painted predictions (0, 1]")
    parser.add_argument("--aug-test", action="store_true",
                        help=f"multi-scale ({AUG_TEST_RATIOS}) + flip test")
    parser.add_argument("--work-dir", help="where the metrics JSON goes (default work_dirs/<config name>)")
    parser.add_argument("--gpu-id", type=int, default=0, help="GPU for non-distributed testing")
    parser.add_argument("--gpu-collect", action="store_true", help="gather results on GPU in distributed tests")
    parser.add_argument("--tmpdir", help="temporary folder for collecting distributed results")
    parser.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                        choices=COMPILE_MODES,
                        help="torch.compile the SegMAN blocks (segman.models.compile_regions) with this "
                             "torch.compile mode (default: 'default'; 'reduce-overhead' replays CUDA graphs); each new image "
                             "size compiles once more, so it pays off with fixed-size test pipelines")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default=None, help="override config keys")
    parser.add_argument("--eval-options", nargs="+", action=DictAction, default={}, help="dataset.evaluate() kwargs")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    if not (args.eval or args.out or args.format_only or args.show_dir):
        parser.error("say what to do with the results: --eval mIoU, --out FILE, --format-only or --show-dir DIR")
    if args.compile and args.checkpoint.endswith(".onnx"):
        parser.error("--compile applies to PyTorch checkpoints, not to an .onnx file (onnxruntime runs it)")
    if args.eval and args.format_only:
        parser.error("--eval and --format-only cannot be combined")
    return args


def main() -> None:
    args = parse_args()
    from mmseg.apis import multi_gpu_test, single_gpu_test
    from mmseg.datasets import build_dataloader, build_dataset
    from mmseg.utils import build_ddp, build_dp, get_device, setup_multi_processes

    cfg = load_config(args.config, args.cfg_options)
    setup_multi_processes(cfg)
    if cfg.get("cudnn_benchmark", False):
        torch.backends.cudnn.benchmark = True
    if args.aug_test:
        cfg.data.test.pipeline[1].img_ratios = AUG_TEST_RATIOS
        cfg.data.test.pipeline[1].flip = True
    cfg.data.test.test_mode = True
    check_config(cfg, training=False)
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f"checkpoint '{args.checkpoint}' does not exist")

    distributed = args.launcher != "none"
    if distributed:
        init_dist(args.launcher, **cfg.dist_params)
    cfg.gpu_ids = [args.gpu_id]
    rank, world_size = get_dist_info()
    work_dir = args.work_dir or osp.join("work_dirs", osp.splitext(osp.basename(args.config))[0])
    if rank == 0:
        mmcv.mkdir_or_exist(osp.abspath(work_dir))

    dataset = build_dataset(cfg.data.test)
    check_labels_when_evaluating(dataset)
    workers = cfg.data.get("workers_per_gpu", 2)
    loader_cfg = {"num_gpus": 1, "dist": distributed, "shuffle": False, "samples_per_gpu": 1,
                  "workers_per_gpu": workers, "persistent_workers": workers > 0,
                  **cfg.data.get("test_dataloader", {})}
    data_loader = build_dataloader(dataset, **loader_cfg)

    if args.checkpoint.endswith(".onnx"):
        from segman_mmseg.onnx_segmentor import OnnxSegmentor

        model = OnnxSegmentor(args.checkpoint, cfg.model.test_cfg, dataset.CLASSES, dataset.PALETTE)
    else:
        model = build_segmentor_from_checkpoint(cfg, args.checkpoint, dataset.CLASSES, dataset.PALETTE)
    if args.compile:
        compile_regions(model, mode=args.compile)
    if cfg.get("fp16") is not None:
        wrap_fp16_model(model)

    cfg.device = get_device()
    test_kwargs = dict(pre_eval=bool(args.eval), format_only=args.format_only, format_args=args.eval_options)
    if distributed:
        model = build_ddp(model, cfg.device, device_ids=[int(os.environ["LOCAL_RANK"])], broadcast_buffers=False)
        results = multi_gpu_test(model, data_loader, args.tmpdir, args.gpu_collect, False, **test_kwargs)
    else:
        model = build_dp(revert_sync_batchnorm(model), cfg.device, device_ids=cfg.gpu_ids)
        results = single_gpu_test(model, data_loader, False, args.show_dir, False, args.opacity, **test_kwargs)

    if rank != 0:
        return
    if args.out:
        print(f"\nwriting results to {args.out}")
        mmcv.dump(results, args.out)
    if args.eval:
        metric = dataset.evaluate(results, metric=args.eval, **args.eval_options)
        stamp = time.strftime("%Y%m%d_%H%M%S", time.localtime())
        json_file = osp.join(work_dir, f"eval_{'multi' if args.aug_test else 'single'}_scale_{stamp}.json")
        mmcv.dump(dict(config=args.config, checkpoint=args.checkpoint, world_size=world_size, metric=metric),
                  json_file, indent=4)
        print(f"metrics written to {json_file}")


if __name__ == "__main__":
    main()
