"""Small building blocks of the SegMAN encoder and decoder (LayerNorm2d comes from timm.layers)."""
from .conv_norm_act import ConvNormAct
from .layer_scale import LayerScale
from .mlp import ConvFFN
from .rope import RoPE2d, apply_rope
from .vssm import VSSM

__all__ = ["ConvFFN", "ConvNormAct", "LayerScale", "RoPE2d", "VSSM", "apply_rope"]
