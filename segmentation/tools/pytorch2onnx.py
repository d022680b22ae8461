"""Export a SegMAN segmentor to ONNX (the command line of mmseg 0.x's ``tools/pytorch2onnx.py``).

    python tools/pytorch2onnx.py CONFIG CHECKPOINT --shape H W --output-file model.onnx [--dynamic-batch] [--verify]
    python tools/test.py CONFIG model.onnx --eval mIoU        # the exported file's mIoU, run by onnxruntime

The file maps a normalised image ``img`` ``(N, 3, H, W)`` float32 to ``logits`` ``(N, num_classes, H, W)``
float32 (softmax and argmax are left to the caller), with standard ONNX operators only (opset 18 by default):
see ``segman.export``.  ``H × W`` is fixed (default: the config's training crop); ``--dynamic-batch`` leaves
the batch size free.  ``--verify`` runs the file in onnxruntime and compares its logits with PyTorch's.
Needs ``pip install -e ".[deploy]"`` (onnx, onnxscript, onnxruntime).
"""
from __future__ import annotations

import argparse
import os.path as osp
import time

from mmcv.utils import DictAction

from segman.export import OPSET, export_onnx, verify_onnx
from segman_mmseg.config_checks import load_config
from segman_mmseg.inference import load_segmentor

MIN_SIDE = 224  # a 7×7 attention window at 1/32 of the image


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="config file")
    parser.add_argument("checkpoint", help="checkpoint file (ours or the original's)")
    parser.add_argument("--shape", type=int, nargs=2, metavar=("H", "W"),
                        help="input height and width (default: the config's crop_size)")
    parser.add_argument("--output-file", default="segman.onnx", help="where the .onnx file goes")
    parser.add_argument("--dynamic-batch", action="store_true", help="leave the batch size free")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    parser.add_argument("--verify", action="store_true", help="compare onnxruntime's logits with PyTorch's")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default=None, help="override config keys")
    args = parser.parse_args()
    for path in (args.config, args.checkpoint):
        if not osp.isfile(path):
            parser.error(f"{path} does not exist")
    return args


def main() -> None:
    args = parse_args()
    cfg = load_config(args.config, args.cfg_options)
    shape = tuple(args.shape or cfg.get("crop_size") or ())
    if len(shape) != 2:
        raise SystemExit(f"error: {args.config} has no crop_size; give the input size with --shape H W")
    if min(shape) < MIN_SIDE or shape[0] % 32 or shape[1] % 32:
        raise SystemExit(f"error: --shape {shape[0]} {shape[1]}: SegMAN takes sides of at least {MIN_SIDE} px "
                         f"that are multiples of 32, e.g. --shape 512 512")
    model = load_segmentor(cfg, args.checkpoint, device="cpu")
    start = time.perf_counter()
    export_onnx(model, args.output_file, shape, method="forward_dummy", dynamic_batch=args.dynamic_batch,
                opset=args.opset)
    batch = "any batch" if args.dynamic_batch else "batch 1"
    print(f"exported {args.output_file} ({batch}, {shape[0]}×{shape[1]}, opset {args.opset}) "
          f"in {time.perf_counter() - start:.0f} s")
    if args.verify:
        error = verify_onnx(model, args.output_file, method="forward_dummy")
        print(f"onnxruntime matches PyTorch: largest difference {error:.1e} of the largest logit")


if __name__ == "__main__":
    main()
