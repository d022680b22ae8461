"""SegMAN encoder: hybrid local attention and state space model backbone (docs/model.md §2-3).

Paper: Fu et al., "SegMAN: Omni-scale Context Modeling with State Space Models and Local Attention
for Semantic Segmentation", CVPR 2025 (arXiv 2412.11890).  ``docs/model.md`` describes the model as
implemented here; the parameter names follow the official checkpoints so they load unchanged.

One class serves both uses:

* classification (``backbone=False``): the ImageNet model with the conv/BN/SiLU/pool classifier,
  registered with timm as ``SegMANEncoder_{t,s,b,l}``;
* segmentation (``backbone=True``): no classifier (no ``classifier.*`` keys); ``forward``
  returns the four stage outputs at strides 4, 8, 16 and 32.

Each stage mixes tokens with LASS (local attention + state space): 2-D RoPE, neighborhood
attention with relative position bias, then either a four-direction selective scan (stages 1-3)
or global attention that uses the neighborhood-attention output as values (stage 4).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, LayerNorm2d, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._features_fx import register_notrace_function, register_notrace_module
from torch import nn
from torch.utils.checkpoint import checkpoint

from segman.ops import neighborhood_attention_2d

from .checkpoint import checkpoint_filter_fn
from .cuda_graph import TrainingGraph
from .layers import VSSM, ConvFFN, LayerScale, RoPE2d, apply_rope

__all__ = ["SegMANEncoder", "VARIANTS", "segman_encoder", "variant_config", "check_input", "min_input_size"]

RopeTables = tuple[torch.Tensor, torch.Tensor]  # (sin, cos), each (H, W, head_dim) float32


def min_input_size(window_sizes: Sequence[int]) -> int:
    """Smallest multiple of 32 whose stage maps (strides 4, 8, 16, 32) all cover their attention windows."""
    need = max(k * 4 * 2 ** i for i, k in enumerate(window_sizes))
    return 32 * math.ceil(need / 32)


@register_notrace_function  # a leaf for torch.fx: checks shapes and dtypes, computes nothing
def check_input(x: torch.Tensor, in_chans: int, window_sizes: tuple[int, ...]) -> None:
    """ValueError naming what is wrong with an input batch for the encoder: layout, dtype, channels, size."""
    if x.dim() != 4:
        raise ValueError(f"SegMANEncoder takes a (B, C, H, W) batch, got shape {tuple(x.shape)}; "
                         f"add the batch dimension with x[None]")
    if not x.is_floating_point():
        raise ValueError(f"SegMANEncoder takes a normalised floating-point image, got {x.dtype}; convert "
                         f"with x.float() and normalise (mean/std) as the model was trained")
    if x.dtype == torch.float16 and x.device.type == "cpu":
        raise ValueError("float16 inputs need a GPU; on the CPU use float32 (or bfloat16 autocast)")
    if x.shape[1] != in_chans:
        raise ValueError(f"SegMANEncoder takes {in_chans}-channel images, got {x.shape[1]} channels"
                         + ("; drop the alpha channel (x[:, :3])" if x.shape[1] == 4 and in_chans == 3 else ""))
    height, width = x.shape[-2:]
    if height % 32 or width % 32:
        raise ValueError(f"SegMANEncoder needs an input whose height and width are multiples of 32, "
                         f"got {height}×{width}; resize or pad the image")
    least = min_input_size(window_sizes)
    if min(height, width) < least:
        limits = ", ".join(f"stage {i + 1}: {k}×{k} window at 1/{4 * 2 ** i} → {k * 4 * 2 ** i} px"
                           for i, k in enumerate(window_sizes))
        raise ValueError(f"SegMANEncoder needs an input of at least {least}×{least} px ({limits}), "
                         f"got {height}×{width}")


class LASSMixer(nn.Module):
    """LASS token mixer (docs/model.md §3): neighborhood attention plus an SSM or a global branch.

    Forward on a normalised ``(B, C, H, W)`` map::

        q, k, v = qkv(x)                      # channel layout [q | k | v], each head-major
        lepe    = lepe(v)                     # depthwise 5×5 on the raw values
        q, k    = rope(q) * scale, rope(k)
        vna     = NA(q, k, v, rpb.0)          # K×K windows, shifted inwards at borders
        local:  y = norm(VSSM(SiLU(BN(dwconv(vna))))) + vna
        global: y = softmax(q kᵀ + resize(rpb.1, (L, L))) vna
        out     = proj(y + lepe)

    RoPE makes q and k float32 (its tables are float32) while v stays in the autocast dtype;
    the attention ops need one dtype, so q and k are cast back to ``v.dtype`` after RoPE: under
    autocast both attentions then run in the low-precision dtype (the original computed the NA
    logits in float32), which keeps the fast kernels usable.  Without autocast everything is
    float32 and nothing changes.  The SSM output is float32 (docs/model.md §3.5).

    Args:
        dim: channels ``C``.
        num_heads: attention heads ``n``; ``C / n`` must be a multiple of 4 (RoPE).
        window_size: odd neighborhood-attention kernel ``K``.
        global_mode: stage-4 mixer (global attention) instead of the SSM branch.
        global_rpb_tokens: side of the learnt global bias table (49 for ``image_size=224``).
        norm_layer: norm after the SSM.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, global_mode: bool = False,
                 global_rpb_tokens: int = 49, norm_layer: Callable[[int], nn.Module] = LayerNorm2d) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if window_size % 2 == 0:
            raise ValueError(f"window_size must be odd, got {window_size}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = window_size
        self.global_mode = global_mode
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.lepe = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.proj = nn.Conv2d(dim, dim, 1)
        span = 2 * window_size - 1
        rpb = [torch.zeros(num_heads, span, span)]
        if global_mode:
            rpb.append(torch.zeros(num_heads, global_rpb_tokens, global_rpb_tokens))
        else:
            self.dwconv = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.BatchNorm2d(dim), nn.SiLU())
            self.ssm = VSSM(dim)
            self.norm = norm_layer(dim)
        self.rpb = nn.ParameterList(rpb)

    def forward(self, x: torch.Tensor, rope: RopeTables) -> torch.Tensor:
        """``(B, C, H, W)`` and RoPE tables for ``H×W`` → ``(B, C, H, W)``."""
        batch, channels, height, width = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=1)
        lepe = self.lepe(v)
        # (B, C, H, W) -> (B, n, H, W, hd): channel h*hd + d is head h, dim d
        q, k, v = (t.unflatten(1, (self.num_heads, self.head_dim)).permute(0, 1, 3, 4, 2) for t in (q, k, v))
        q = (apply_rope(q, *rope) * self.scale).to(v.dtype)
        k = apply_rope(k, *rope).to(v.dtype)
        vna = neighborhood_attention_2d(q, k, v, self.window_size, rpb=self.rpb[0], scale=1.0)
        if self.global_mode:
            y = self._global_attention(q, k, vna)
        else:
            y = self._ssm_branch(vna.permute(0, 1, 4, 2, 3).reshape(batch, channels, height, width))
        return self.proj(y + lepe)

    def _ssm_branch(self, vna: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` NA output → ``norm(VSSM(SiLU(BN(dwconv(vna))))) + vna``."""
        y = self.ssm(self.dwconv(vna)).view_as(vna)
        return self.norm(y) + vna

    def _global_attention(self, q: torch.Tensor, k: torch.Tensor, vna: torch.Tensor) -> torch.Tensor:
        """q (pre-scaled), k, vna: ``(B, n, H, W, hd)`` → ``softmax(q kᵀ + G) vna`` as ``(B, C, H, W)``.

        ``G`` (``(1, n, L, L)``) is the learnt ``rpb.1`` table resized bicubically to ``L×L`` like
        an image, as the original segmentation model does (an identity at ``L = 49``).  SDPA with
        ``scale=1`` computes exactly the explicit softmax; its fused kernels avoid storing the
        ``(B, n, L, L)`` attention matrix.
        """
        batch, heads, height, width, head_dim = q.shape
        length = height * width
        bias = F.interpolate(self.rpb[1][None], size=(length, length), mode="bicubic", align_corners=False)
        q, k, vna = (t.reshape(batch, heads, length, head_dim) for t in (q, k, vna))
        out = F.scaled_dot_product_attention(q, k, vna, attn_mask=bias.to(q.dtype), scale=1.0)
        return out.transpose(-1, -2).reshape(batch, heads * head_dim, height, width)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, window_size={self.window_size}, global_mode={self.global_mode}"


class Block(nn.Module):
    """SegMAN block (docs/model.md §2.3)::

        x = x + cpe1(x)
        x = x + drop_path(layer_scale1(token_mixer(norm1(x))))
        x = x + cpe2(x)
        x = x + drop_path(layer_scale2(mlp(norm2(x))))

    Args:
        dim: channels ``C``.
        num_heads, window_size, global_mode, global_rpb_tokens: see :class:`LASSMixer`.
        mlp_ratio: FFN width ``int(mlp_ratio * C)`` (truncated, as upstream).
        drop_path: stochastic-depth rate.
        layer_scale_init_value: initial LayerScale, or None for no LayerScale.
        norm_layer: the pre-norms and the mixer's SSM norm.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float, global_mode: bool = False,
                 global_rpb_tokens: int = 49, drop_path: float = 0.0, layer_scale_init_value: Optional[float] = None,
                 norm_layer: Callable[[int], nn.Module] = LayerNorm2d) -> None:
        super().__init__()
        self.cpe1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = norm_layer(dim)
        self.token_mixer = LASSMixer(dim, num_heads, window_size, global_mode, global_rpb_tokens, norm_layer)
        self.cpe2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm2 = norm_layer(dim)
        self.mlp = ConvFFN(dim, int(mlp_ratio * dim))
        use_ls = layer_scale_init_value is not None
        self.layer_scale1 = LayerScale(dim, layer_scale_init_value) if use_ls else nn.Identity()
        self.layer_scale2 = LayerScale(dim, layer_scale_init_value) if use_ls else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, rope: RopeTables,
                keep: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """``(B, C, H, W)`` → ``(B, C, H, W)``.  ``keep``: stochastic depth's scales for the two
        residual branches from :meth:`draw_keep` (then ``drop_path`` draws nothing)."""
        x = x + self.cpe1(x)
        x = x + self._drop(self.layer_scale1(self.token_mixer(self.norm1(x), rope)), keep, 0)
        x = x + self.cpe2(x)
        return x + self._drop(self.layer_scale2(self.mlp(self.norm2(x))), keep, 1)

    def _drop(self, branch: torch.Tensor, keep: Optional[tuple[torch.Tensor, torch.Tensor]], i: int) -> torch.Tensor:
        return self.drop_path(branch) if keep is None else branch * keep[i]

    def draw_keep(self, x: torch.Tensor) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """Stochastic depth's per-sample scales ``(B, 1, 1, 1)`` for the two residual branches, drawn
        by ``drop_path`` itself (applied to ones) in the order :meth:`forward` would draw them; None
        when the block has no stochastic depth or is in eval mode.

        A checkpointed block takes them as an input, so its recomputation in backward reuses them
        and needs no RNG state: stashing and restoring the CUDA RNG state is not allowed inside a
        CUDA graph capture (``cuda_graph``).
        """
        if not (isinstance(self.drop_path, DropPath) and self.training):
            return None
        ones = x.new_ones(x.shape[0], 1, 1, 1)
        first = self.drop_path(ones)
        return first, self.drop_path(ones)


@register_notrace_module  # a leaf for torch.fx (timm's feature extraction): its blocks branch on shapes
class SegMANStage(nn.Module):
    """A stage (docs/model.md §2.2): RoPE tables computed once, then the blocks.

    Args:
        dim, num_heads, window_size, mlp_ratio, global_mode, global_rpb_tokens, layer_scale_init_value,
        norm_layer: see :class:`Block`.
        depth: number of blocks.
        drop_path: one stochastic-depth rate per block (None: no stochastic depth).
        checkpoint_blocks: the first ``checkpoint_blocks`` blocks run under non-reentrant gradient
            checkpointing when the input requires grad (their stochastic-depth draws are made
            outside, :meth:`Block.draw_keep`, so no RNG state is stashed: capturable in CUDA graphs).
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 global_mode: bool = False, global_rpb_tokens: int = 49, drop_path: Optional[Sequence[float]] = None,
                 layer_scale_init_value: Optional[float] = None,
                 norm_layer: Callable[[int], nn.Module] = LayerNorm2d, checkpoint_blocks: int = 0) -> None:
        super().__init__()
        self.checkpoint_blocks = checkpoint_blocks
        self.rope = RoPE2d(dim // num_heads)
        drop_path = [0.0] * depth if drop_path is None else drop_path
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, window_size, mlp_ratio, global_mode, global_rpb_tokens, drop_path[j],
                  layer_scale_init_value, norm_layer)
            for j in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` → ``(B, C, H, W)``."""
        rope = self.rope(x.shape[-2:])
        for j, block in enumerate(self.blocks):
            if j < self.checkpoint_blocks and x.requires_grad:
                x = checkpoint(block, x, rope, block.draw_keep(x), use_reentrant=False, preserve_rng_state=False)
            else:
                x = block(x, rope)
        return x


def _conv_bn(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """3×3 conv (pad 1, no bias) + BatchNorm2d, as ``nn.Sequential(conv, bn)``."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False), nn.BatchNorm2d(out_channels))


class SegMANEncoder(nn.Module):
    """SegMAN encoder (docs/model.md §2), in classification or backbone form.

    Input ``(B, in_chans, H, W)`` with ``H`` and ``W`` multiples of 32, large enough that every
    stage map covers its attention window (224 px for the released variants).  The argument
    defaults build SegMAN-T; :data:`VARIANTS` lists every variant.

    Args:
        embed_dims: stage widths ``C1..C4``.
        depths: blocks per stage.
        num_heads: heads per stage.
        window_sizes: neighborhood-attention kernel per stage (odd).
        mlp_ratios: FFN expansion per stage (hidden width ``int(r * C)``).
        layer_scale_init_value: LayerScale init (B/L: 1e-6), None for no LayerScale (T/S).
        num_classes: classifier outputs; 0 keeps the pooled 1024-d pre-logits.  Ignored when
            ``backbone`` is set.
        in_chans: input channels.
        drop_path_rate: stochastic depth, linear from 0 to this rate over all blocks.
        image_size: training resolution that sizes the global bias table ``rpb.1``
            (``((image_size // 32)²)²`` entries per head); keep 224 to load the official weights.
        head_hidden_size: width of the classifier's 1×1 conv (1024).
        use_checkpoint: per stage, how many leading blocks use gradient checkpointing.
        backbone: build the segmentation form: no classifier, ``forward`` returns four maps.
        norm_layer: the blocks' norm (LayerNorm2d, eps 1e-6).
        device, dtype: where and in which dtype the parameters are created (``device="meta"``: no
            memory), as timm's ``create_model(..., device=, dtype=)`` passes them.
        cuda_graph: in training on a GPU, replay forward and backward from CUDA graphs captured
            on the first step (:mod:`segman.models.cuda_graph`: removes the host work that bounds
            small-batch training; input shape fixed; one forward per backward).
    """

    def __init__(self, embed_dims: Sequence[int] = (32, 64, 144, 192), depths: Sequence[int] = (2, 2, 4, 2),
                 num_heads: Sequence[int] = (1, 2, 4, 8), window_sizes: Sequence[int] = (11, 9, 9, 7),
                 mlp_ratios: Sequence[float] = (4, 4, 3, 3), layer_scale_init_value: Optional[float] = None,
                 num_classes: int = 1000, in_chans: int = 3, drop_path_rate: float = 0.0, image_size: int = 224,
                 head_hidden_size: int = 1024, use_checkpoint: Sequence[int] = (0, 0, 0, 0), backbone: bool = False,
                 norm_layer: Callable[[int], nn.Module] = LayerNorm2d, cuda_graph: bool = False,
                 device: Optional[torch.device | str] = None, dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        with torch.device(device) if device is not None else contextlib.nullcontext():  # "meta": no memory
            per_stage = dict(embed_dims=embed_dims, depths=depths, num_heads=num_heads, window_sizes=window_sizes,
                             mlp_ratios=mlp_ratios, use_checkpoint=use_checkpoint)
            num_stages = len(embed_dims)
            if any(len(v) != num_stages for v in per_stage.values()):
                raise ValueError(f"per-stage settings must all have {num_stages} entries: "
                                 + ", ".join(f"{k}={tuple(v)}" for k, v in per_stage.items()))
            self.embed_dims = tuple(embed_dims)
            self.window_sizes = tuple(window_sizes)
            self.backbone = backbone
            self.num_classes = 0 if backbone else num_classes
            self.num_features = embed_dims[-1]
            self.head_hidden_size = head_hidden_size
            self.training_graph = TrainingGraph(self, self._forward_eager) if cuda_graph else None
            global_rpb_tokens = (image_size // 32) ** 2

            stem = embed_dims[0]
            self.patch_embed = nn.Sequential(
                *_conv_bn(in_chans, stem // 2, 2), nn.GELU(),
                *_conv_bn(stem // 2, stem // 2, 1), nn.GELU(),
                *_conv_bn(stem // 2, stem, 2), nn.GELU(),
                *_conv_bn(stem, stem, 1))

            dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
            self.layers = nn.ModuleList()
            self.feature_info = []
            for i in range(num_stages):
                last = i == num_stages - 1
                self.layers.append(SegMANStage(
                    embed_dims[i], depths[i], num_heads[i], window_sizes[i], mlp_ratios[i], global_mode=last,
                    global_rpb_tokens=global_rpb_tokens, drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])],
                    layer_scale_init_value=layer_scale_init_value, norm_layer=norm_layer,
                    checkpoint_blocks=use_checkpoint[i]))
                self.layers.append(nn.Identity() if last else _conv_bn(embed_dims[i], embed_dims[i + 1], 2))
                self.feature_info.append(dict(num_chs=embed_dims[i], reduction=4 * 2 ** i, module=f"layers.{2 * i}"))

            if not backbone:
                self.classifier = nn.Sequential(
                    nn.Conv2d(embed_dims[-1], head_hidden_size, 1), nn.BatchNorm2d(head_hidden_size), nn.SiLU(),
                    nn.AdaptiveAvgPool2d(1), self._make_logits(num_classes))
            self.apply(self._init_weights)
        if dtype is not None:
            self.to(dtype)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """trunc_normal(0.02) / zero bias for every Conv2d (docs/model.md §6; the encoder has no Linear).

        Norm layers keep their default (1, 0); LayerScale, VSSM parameters and RPB tables
        (zeros) keep their own init.
        """
        if isinstance(m, nn.Conv2d):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def _make_logits(self, num_classes: int) -> nn.Module:
        return nn.Conv2d(self.head_hidden_size, num_classes, 1) if num_classes > 0 else nn.Identity()

    @property
    def min_input_size(self) -> int:
        """Smallest multiple of 32 whose stage maps all cover their attention windows."""
        return min_input_size(self.window_sizes)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Nothing beyond timm's default rule (1-d params and biases).

        As in the original ImageNet training, RPB tables, ``A_logs`` and LayerScale weights are
        decayed (docs/model.md §8.2).
        """
        return set()

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint every block of every stage (or none)."""
        for stage in self.layers[::2]:
            stage.checkpoint_blocks = len(stage.blocks) if enable else 0

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The final 1×1 conv (``classifier.4``)."""
        return self.classifier[-1]

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the final 1×1 conv; ``num_classes=0`` leaves the 1024-d pooled features."""
        if self.backbone:
            raise RuntimeError("the backbone form of SegMANEncoder has no classifier")
        if global_pool not in (None, "avg"):
            raise ValueError(f"SegMANEncoder only pools by average, got global_pool={global_pool!r}")
        self.num_classes = num_classes
        logits = self._make_logits(num_classes).to(self.classifier[0].weight)
        self.classifier[-1] = logits
        logits.apply(self._init_weights)

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[int | Sequence[int]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """timm's feature API: the outputs of the stages ``indices`` picks (None: all; n: the last n; a
        list: those), each ``(B, C_i, H/2^(i+2), W/2^(i+2))``, and unless ``intermediates_only`` the
        last stage map as well (the classifier's input; with ``stop_early``, the map where the loop
        stopped).  ``norm`` is accepted for timm's interface: the encoder has no final norm."""
        if output_fmt != "NCHW":
            raise ValueError(f"SegMANEncoder gives NCHW features only, got output_fmt={output_fmt!r}")
        num_stages = (len(self.layers) + 1) // 2  # stage, downsample, ..., stage[, identity]
        take, last = feature_take_indices(num_stages, indices)
        check_input(x, self.patch_embed[0].in_channels, self.window_sizes)
        x = self.patch_embed(x)
        intermediates = []
        for i in range(last + 1 if stop_early else num_stages):
            x = self.layers[2 * i](x)
            if i in take:
                intermediates.append(x)
            if 2 * i + 1 < len(self.layers) and not (stop_early and i == last):
                x = self.layers[2 * i + 1](x)  # downsampling into the next stage
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last of ``indices`` (and the classifier with ``prune_head``), as
        timm's ``features_only`` models do; returns the absolute stage indices kept."""
        take, last = feature_take_indices((len(self.layers) + 1) // 2, indices)
        self.layers = self.layers[:2 * last + 1]
        if prune_head and hasattr(self, "classifier"):
            del self.classifier
            self.num_classes = 0
        return take

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, H, W)`` → the stage outputs before downsampling: ``(B, C_i, H/2^(i+2), W/2^(i+2))``."""
        return self.forward_intermediates(x, intermediates_only=True)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` → the last stage map ``(B, C4, H/32, W/32)``."""
        return self.forward_pyramid(x)[-1]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(B, C4, h, w)`` → logits ``(B, num_classes)``, or the pooled ``(B, 1024)`` with ``pre_logits``."""
        *pooling, logits = self.classifier  # the installed modules themselves (torch.fx traces them)
        for layer in pooling:
            x = layer(x)
        return x.flatten(1) if pre_logits else logits(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Backbone form: the four stage maps; classification form: ``(B, num_classes)`` logits."""
        if self.training_graph is not None:
            return self.training_graph(x)
        return self._forward_eager(x)

    def _forward_eager(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.backbone:
            return self.forward_pyramid(x)
        return self.forward_head(self.forward_features(x))


# Variants (docs/model.md §1.1).  L2 exists only as a segmentation backbone in the original (its
# builder was broken there); it is built like the others here.
VARIANTS: dict[str, dict[str, Any]] = {
    "t": dict(embed_dims=(32, 64, 144, 192), depths=(2, 2, 4, 2), num_heads=(1, 2, 4, 8),
              window_sizes=(11, 9, 9, 7), mlp_ratios=(4, 4, 3, 3)),
    "s": dict(embed_dims=(64, 144, 288, 512), depths=(2, 2, 10, 4), num_heads=(2, 4, 8, 16),
              window_sizes=(11, 9, 7, 7), mlp_ratios=(4, 4, 3.4, 3.4)),
    "b": dict(embed_dims=(96, 160, 364, 560), depths=(4, 4, 18, 4), num_heads=(4, 8, 13, 20),
              window_sizes=(11, 9, 7, 7), mlp_ratios=(4, 4, 3, 3), layer_scale_init_value=1e-6),
    "l": dict(embed_dims=(96, 192, 432, 640), depths=(4, 4, 28, 4), num_heads=(4, 8, 12, 20),
              window_sizes=(11, 9, 7, 7), mlp_ratios=(4, 4, 3, 3), layer_scale_init_value=1e-6),
    "l2": dict(embed_dims=(96, 192, 448, 640), depths=(4, 4, 26, 4), num_heads=(4, 8, 14, 20),
               window_sizes=(11, 9, 7, 7), mlp_ratios=(4, 4, 3, 3), layer_scale_init_value=1e-6),
}


def variant_config(variant: str) -> dict[str, Any]:
    """The constructor arguments of a variant (``t``, ``s``, ``b``, ``l``, ``l2``; case-insensitive)."""
    key = variant.lower()
    if key not in VARIANTS:
        raise ValueError(f"unknown SegMAN variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return dict(VARIANTS[key])


def segman_encoder(variant: str, **kwargs: Any) -> SegMANEncoder:
    """Build a variant without timm's registry, e.g. ``segman_encoder("s", backbone=True)``.

    ``kwargs`` override or extend the variant's :class:`SegMANEncoder` arguments.
    """
    return SegMANEncoder(**{**variant_config(variant), **kwargs})


def _create_segman_encoder(name: str, pretrained: bool = False, **kwargs: Any) -> SegMANEncoder:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(SegMANEncoder, name, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(feature_cls="getter", out_indices=out_indices), **kwargs)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "min_input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.9, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.0", "classifier": "classifier", "fixed_input_size": False,
        "paper_ids": "arXiv:2412.11890", **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "SegMANEncoder_t.in1k": _cfg(crop_pct=0.9),
    "SegMANEncoder_s.in1k": _cfg(crop_pct=0.9),
    "SegMANEncoder_b.in1k": _cfg(crop_pct=0.95),
    "SegMANEncoder_l.in1k": _cfg(crop_pct=0.95),
})


@register_model
def SegMANEncoder_t(pretrained: bool = False, **kwargs: Any) -> SegMANEncoder:
    return _create_segman_encoder("SegMANEncoder_t", pretrained, **{**VARIANTS["t"], **kwargs})


@register_model
def SegMANEncoder_s(pretrained: bool = False, **kwargs: Any) -> SegMANEncoder:
    return _create_segman_encoder("SegMANEncoder_s", pretrained, **{**VARIANTS["s"], **kwargs})


@register_model
def SegMANEncoder_b(pretrained: bool = False, **kwargs: Any) -> SegMANEncoder:
    return _create_segman_encoder("SegMANEncoder_b", pretrained, **{**VARIANTS["b"], **kwargs})


@register_model
def SegMANEncoder_l(pretrained: bool = False, **kwargs: Any) -> SegMANEncoder:
    return _create_segman_encoder("SegMANEncoder_l", pretrained, **{**VARIANTS["l"], **kwargs})
