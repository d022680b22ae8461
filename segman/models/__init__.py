"""SegMAN models: encoder (timm-registered as ``SegMANEncoder_{t,s,b,l}``), MMSC decoder, segmentor.

Importing this package registers the encoders with timm, so
``timm.create_model("SegMANEncoder_s", num_classes=1000)`` works afterwards.
"""
from .checkpoint import (CheckpointError, checkpoint_filter_fn, extract_state_dict, load_encoder_checkpoint,
                         load_segmentor_checkpoint, load_checkpoint_file)
from .compile import COMPILE_MODES, compile_regions
from .decoder import MMSCFusion, MMSCHead, VSSMBlock
from .encoder import VARIANTS, SegMANEncoder, segman_encoder, variant_config
from .segmentor import DECODER_SETTINGS, SegMAN

__all__ = [
    "SegMANEncoder", "VARIANTS", "segman_encoder", "variant_config",
    "MMSCFusion", "MMSCHead", "VSSMBlock", "SegMAN", "DECODER_SETTINGS",
    "CheckpointError", "load_checkpoint_file", "extract_state_dict", "checkpoint_filter_fn",
    "load_encoder_checkpoint", "load_segmentor_checkpoint", "compile_regions", "COMPILE_MODES",
]
