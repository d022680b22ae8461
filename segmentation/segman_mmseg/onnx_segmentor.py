"""An exported ONNX file as an mmseg segmentor, so ``tools/test.py`` evaluates it like a checkpoint.

mmseg's own test-time logic (whole or sliding-window inference, flip, rescaling to the original
image, softmax, argmax) is inherited from ``EncoderDecoder``; only ``encode_decode`` — image to logits
at the image's size, the graph that ``tools/pytorch2onnx.py`` exports — runs in onnxruntime.  A file
exported for a fixed ``H × W`` gets each test image resized to that size and its logits resized back.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from mmseg.models.segmentors import EncoderDecoder

from segman.export import OnnxModel


class OnnxSegmentor(EncoderDecoder):
    """``EncoderDecoder`` whose network is an ONNX file (CPU, onnxruntime).

    Args:
        path: the exported ``.onnx`` file.
        test_cfg: the config's ``model.test_cfg`` (``mode='whole'`` or ``'slide'``).
        classes, palette: the dataset's, for drawing predictions.
    """

    def __init__(self, path: str, test_cfg: dict, classes: Optional[Sequence[str]] = None,
                 palette: Optional[Sequence[Sequence[int]]] = None) -> None:
        super(EncoderDecoder, self).__init__(init_cfg=None)  # builds no backbone or head
        self.network = OnnxModel(path)
        self.test_cfg = test_cfg
        self.align_corners = False
        self.num_classes = self.out_channels = self.network.num_classes
        self.CLASSES, self.PALETTE = classes, palette

    def encode_decode(self, img: torch.Tensor, img_metas) -> torch.Tensor:
        """``(N, 3, h, w)`` → logits ``(N, num_classes, h, w)``, computed by onnxruntime."""
        size = tuple(img.shape[-2:])
        inputs = img if size == self.network.size else F.interpolate(
            img, size=self.network.size, mode="bilinear", align_corners=False)
        logits = torch.from_numpy(self.network(inputs)).to(img.device)
        if size != self.network.size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits

    def forward_train(self, *args, **kwargs):
        raise NotImplementedError("an exported ONNX model can be evaluated, not trained")
