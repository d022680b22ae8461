"""Count the FLOPs and parameters of a SegMAN segmentor the way the published numbers were counted
(``docs/model.md`` §9).

    python tools/get_flops.py local_configs/segman/tiny/segman_t_ade.py                 # 512×512
    python tools/get_flops.py local_configs/segman/small/segman_s_cityscapes.py --shape 1024 2048
    python tools/get_flops.py --imagenet t                                              # classifier, 224²

Method: the segmentor's ``forward_dummy`` (``encode_decode``: backbone, decode head and the final
bilinear resize of the logits to the input size) is traced on one ``1×3×H×W`` input with fvcore's
``FlopCountAnalysis``, which counts one FLOP per multiply-accumulate.  fvcore's own handles count
convolutions (grouped too), linear/matmul/einsum, BatchNorm (2/elem in eval), LayerNorm (5/elem),
bilinear upsampling (4 per output element) and adaptive average pooling (1 per input element).
This script adds handles for what fvcore does not know:

* the selective scan (``segman::selective_scan`` and the fused ``segman::ss2d_scan``): ``9·B·L·Dtot·N + B·Dtot·L``;
* neighborhood attention: ``B·n·H·W·hd·K² + B·n·H·W·K²`` (QK plus the bias) and
  ``B·n·H·W·hd·K²`` (AV);
* ``scaled_dot_product_attention``: ``B·n·Lq·Lk·hd`` each for QKᵀ and PV, as the original einsums;
* the decoder's broadcast of its pooled ``1×1`` map: 4 per output element, as the bilinear resize
  upstream used there;
* ``addcmul`` (LayerScale of B and L): one per output element, as upstream's depthwise 1×1 conv.

Softmax, activations, elementwise ops, ``pixel_unshuffle``, cross-scan/merge and the bicubic resize of
the global RPB are not counted.  ``--shape H W`` sets the input (one value: a square); the default is
512×512, or 1024×2048 (a full image) for Cityscapes configs.  Unless ``--fvcore-only`` is given, mmcv's
hook-based ``get_model_complexity_info`` is printed too for comparison; it misses the custom ops and
is not the README's number.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn

Handle = Callable[[List[Any], List[Any]], Any]

DEFAULT_SHAPE = (512, 512)
CITYSCAPES_SHAPE = (1024, 2048)
IMAGENET_SHAPE = (224, 224)


def _shape(value) -> Optional[List[int]]:
    """Shape of a traced ``torch._C.Value`` (None for a non-tensor)."""
    if not value.isCompleteTensor():
        return None
    return value.type().sizes()


def selective_scan_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``segman::selective_scan`` / ``segman::ss2d_scan(u_or_x, delta, A, B, C, ...)``:
    ``9·B·L·Dtot·N + B·Dtot·L`` (``Dtot`` = the scanned channels).

    Sizes come from ``delta`` (``(B, Dtot, L)``) and ``A`` (``(Dtot, N)``), which both ops share (the
    fused SS2D op's first input is the ``(B, C, H, W)`` map).
    """
    (batch, channels, length), (_, n_state) = _shape(inputs[1]), _shape(inputs[2])
    return 9 * batch * length * channels * n_state + batch * channels * length


def neighborhood_attention_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``segman::neighborhood_attention_2d(q, k, v, kernel_size, ...)``, q ``(B, n, H, W, hd)``: QK (+ bias)
    and AV products."""
    batch, heads, height, width, head_dim = _shape(inputs[0])
    kernel_size = inputs[3].toIValue()
    window = batch * heads * height * width * kernel_size ** 2
    return window * head_dim + window + window * head_dim


def broadcast_resize_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``aten::expand_as`` of a ``(B, C, 1, 1)`` map to ``(B, C, H, W)``: 4 per output element.

    The decoder broadcasts its image-pool output where upstream bilinearly resized the 1×1 map
    (the same values); fvcore counts that resize as 4 per output element, and so does the README.
    Other broadcasts count nothing.
    """
    src, out = _shape(inputs[0]), _shape(outputs[0])
    if src is None or out is None or len(src) != 4 or len(out) != 4 or src[2:] != [1, 1] or out[2:] == [1, 1]:
        return 0
    return 4 * math.prod(out)


def addcmul_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``aten::addcmul``: one multiply-add per output element.

    LayerScale (B, L) is ``addcmul(bias, x, weight)``; upstream ran it as a depthwise 1×1 conv,
    which fvcore counts as ``B·C·H·W``, the same number.
    """
    return math.prod(_shape(outputs[0]))


def no_flop_jit(inputs: List[Any], outputs: List[Any]) -> Counter:
    """Data movement only (cross-scan / cross-merge kernels)."""
    return Counter()


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``aten::scaled_dot_product_attention(q, k, v, ...)``: ``B·n·Lq·Lk·(hd + hd_v)`` (QKᵀ and PV)."""
    q, k, v = (_shape(x) for x in inputs[:3])
    *lead, length_q, head_dim = q
    length_k, head_dim_v = k[-2], v[-1]
    return math.prod(lead) * length_q * length_k * (head_dim + head_dim_v)


# Our ops are torch.library custom ops (segman.ops.library), traced as ``segman::<op>`` nodes.
SEGMAN_HANDLES: Dict[str, Handle] = {
    "segman::selective_scan": selective_scan_flop_jit,
    "segman::ss2d_scan": selective_scan_flop_jit,
    "segman::neighborhood_attention_2d": neighborhood_attention_flop_jit,
    "segman::cross_scan": no_flop_jit,
    "segman::cross_merge": no_flop_jit,
}
ATEN_HANDLES: Dict[str, Handle] = {
    "aten::scaled_dot_product_attention": sdpa_flop_jit,
    "aten::expand_as": broadcast_resize_flop_jit,
    "aten::addcmul": addcmul_flop_jit,
}


def flop_analysis(model: nn.Module, inputs: tuple):
    """An fvcore ``FlopCountAnalysis`` of ``model(*inputs)`` with the SegMAN handles."""
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError as exc:
        raise ImportError("get_flops needs fvcore: pip install fvcore==0.1.5.post20221221") from exc
    analysis = FlopCountAnalysis(model, inputs).set_op_handle(**ATEN_HANDLES, **SEGMAN_HANDLES)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    return analysis


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parse_shape(shape: Optional[List[int]], default: tuple) -> tuple:
    """``--shape`` values (``[H, W]``, ``[S]`` or None) → ``(H, W)``."""
    return default if shape is None else (shape[0], shape[-1])


def build_segmentor(config: str, cfg_options: Optional[dict] = None):
    """The config's segmentor in eval mode on CPU, without pretrained weights (BN instead of SyncBN)."""
    from mmcv.cnn.utils import revert_sync_batchnorm

    import segman_mmseg  # noqa: F401  (registers the SegMAN types)
    from segman_mmseg.config_checks import load_config
    from mmseg.models import build_segmentor as mmseg_build_segmentor

    cfg = load_config(config, cfg_options)
    cfg.model.backbone.pretrained = None  # FLOPs need no weights
    cfg.model.pretrained = None
    model = mmseg_build_segmentor(cfg.model, train_cfg=cfg.get("train_cfg"), test_cfg=cfg.get("test_cfg"))
    return cfg, revert_sync_batchnorm(model).eval()


def default_shape(cfg) -> tuple:
    """512×512 (ADE20K, COCO-Stuff), or a full 1024×2048 image for Cityscapes (the README's sizes)."""
    return CITYSCAPES_SHAPE if "cityscapes" in str(cfg.get("dataset_type", "")).lower() else DEFAULT_SHAPE


def segmentor_flops(model: nn.Module, shape: tuple) -> dict:
    """GFLOPs of ``forward_dummy`` on ``1×3×H×W``: encoder, decoder (with the final resize), total."""
    model.forward = model.forward_dummy
    img = torch.zeros(1, 3, *shape)
    with torch.no_grad():
        analysis = flop_analysis(model, (img,))
        total = analysis.total()
        by_module = analysis.by_module()
    encoder = by_module["backbone"]
    return dict(encoder=encoder / 1e9, decoder=(total - encoder) / 1e9, total=total / 1e9,
                uncounted=sorted(analysis.unsupported_ops()))


def imagenet_flops(variant: str, shape: tuple) -> tuple:
    """(GFLOPs, params) of the timm classifier ``SegMANEncoder_<variant>`` on ``1×3×H×W``."""
    import timm

    import segman.models  # noqa: F401  (registers the timm models)

    model = timm.create_model(f"SegMANEncoder_{variant}", pretrained=False).eval()
    with torch.no_grad():
        total = flop_analysis(model, (torch.zeros(1, 3, *shape),)).total()
    return total / 1e9, count_params(model)


def mmcv_complexity(model: nn.Module, shape: tuple) -> tuple:
    """mmcv's hook-based count (misses the custom ops; not the README's number)."""
    from mmcv.cnn import get_model_complexity_info

    model.forward = model.forward_dummy
    with torch.no_grad():
        return get_model_complexity_info(model, (3, *shape), print_per_layer_stat=False, as_strings=True)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    from mmcv.utils import DictAction

    parser = argparse.ArgumentParser(description="Count the FLOPs and parameters of a SegMAN segmentor")
    parser.add_argument("config", nargs="?", help="config file, e.g. local_configs/segman/tiny/segman_t_ade.py")
    parser.add_argument("--shape", type=int, nargs="+", metavar="SIZE",
                        help="input H W, or one size for a square (default 512×512, 1024×2048 for Cityscapes)")
    parser.add_argument("--fvcore-only", action="store_true", help="skip mmcv's get_model_complexity_info")
    parser.add_argument("--imagenet", choices=["t", "s", "b", "l"], metavar="VARIANT",
                        help="count the ImageNet classifier SegMANEncoder_<VARIANT> instead (224×224 by default)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default=None,
                        help="override config keys, e.g. model.decode_head.num_classes=19")
    args = parser.parse_args(argv)
    if (args.config is None) == (args.imagenet is None):
        parser.error("give either a CONFIG or --imagenet VARIANT")
    if args.shape is not None and len(args.shape) not in (1, 2):
        parser.error(f"--shape takes H W or one size S, got {len(args.shape)} values")
    return args


def main(argv: Optional[List[str]] = None) -> dict:
    """Print the counts and return them (GFLOPs and parameter counts) as a dict."""
    args = parse_args(argv)
    if args.imagenet:
        shape = parse_shape(args.shape, IMAGENET_SHAPE)
        gflops, params = imagenet_flops(args.imagenet, shape)
        print(f"SegMANEncoder_{args.imagenet} (ImageNet classifier), input 1×3×{shape[0]}×{shape[1]}")
        print(f"FLOPs (fvcore, 1 per MAC): {gflops:.3f} G ({round(gflops * 1e9):,})")
        print(f"Params: {params:,}")
        return dict(total=gflops, params=params)

    cfg, model = build_segmentor(args.config, args.cfg_options)
    shape = parse_shape(args.shape, default_shape(cfg))
    params = dict(params=count_params(model), backbone_params=count_params(model.backbone),
                  decode_head_params=count_params(model.decode_head))
    flops = segmentor_flops(model, shape)
    line = "=" * 60
    print(line)
    print(f"Config: {args.config}")
    print(f"Input shape: 1×3×{shape[0]}×{shape[1]}")
    print("FLOPs (fvcore, 1 per MAC):")
    print(f"  encoder:  {flops['encoder']:8.2f} G")
    print(f"  decoder:  {flops['decoder']:8.2f} G  (decode head + resize of the logits to the input)")
    print(f"  total:    {flops['total']:8.2f} G")
    print(f"Params: {params['params']:,} (backbone {params['backbone_params']:,}, "
          f"decode_head {params['decode_head_params']:,})")
    if flops["uncounted"]:
        print(f"Ops without a FLOP handle (not counted): {', '.join(flops['uncounted'])}")
    if not args.fvcore_only:
        mmcv_flops, mmcv_params = mmcv_complexity(model, shape)
        print(f"mmcv get_model_complexity_info (misses the custom ops): {mmcv_flops}, {mmcv_params}")
    print(line)
    return {**flops, **params}


if __name__ == "__main__":
    try:
        main()
    except FileNotFoundError as exc:
        sys.exit(f"error: {exc}")
