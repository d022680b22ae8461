"""``AlignedResize``: keep-ratio resize, then stretch both sides up to multiples of 32 (docs/model.md §8.1)."""
from __future__ import annotations

import math

import mmcv
import numpy as np
from mmseg.datasets.builder import PIPELINES
from mmseg.datasets.pipelines import Resize


@PIPELINES.register_module()
class AlignedResize(Resize):
    """mmseg ``Resize`` followed by a resize (not a pad) to ``ceil(h/d)*d × ceil(w/d)*d``.

    SegMAN's encoder needs inputs that are multiples of 32.  The image is resized bilinearly and
    the label with nearest neighbour; ``img_shape`` and ``scale_factor`` describe the final size.

    Args:
        size_divisor: the multiple both sides are resized up to (default 32).
        min_side: the shorter side is then enlarged to at least this (keeping the ratio): the
            model's smallest input (224 px for the released variants), so that images of any aspect
            ratio can be predicted; 0 (default) leaves the size to the rescale.  Unlike mmseg's
            ``min_size``, it changes nothing where the rescale already gives enough.
        **kwargs: the arguments of mmseg's ``Resize``.
    """

    def __init__(self, size_divisor: int = 32, min_side: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.size_divisor = size_divisor
        self.min_side = min_side

    def _aligned(self, shape: tuple[int, int]) -> tuple[int, int]:
        """(h, w) → (w', h'): the shorter side at least ``min_side``, both rounded up to the divisor, in
        mmcv's (w, h) size order."""
        h, w = shape
        grow = max(1.0, self.min_side / min(h, w))
        h, w = round(h * grow), round(w * grow)
        d = self.size_divisor
        return int(math.ceil(w / d)) * d, int(math.ceil(h / d)) * d

    def _resize_img(self, results: dict) -> None:
        super()._resize_img(results)
        orig_h, orig_w = results['ori_shape'][:2]
        img = mmcv.imresize(results['img'], self._aligned(results['img'].shape[:2]))
        h, w = img.shape[:2]
        results['img'] = img
        results['img_shape'] = img.shape
        results['pad_shape'] = img.shape
        results['scale_factor'] = np.array([w / orig_w, h / orig_h] * 2, dtype=np.float32)

    def _resize_seg(self, results: dict) -> None:
        super()._resize_seg(results)
        for key in results.get('seg_fields', []):
            results[key] = mmcv.imresize(results[key], self._aligned(results[key].shape[:2]),
                                         interpolation='nearest')

    def __repr__(self) -> str:
        return f'{super().__repr__()[:-1]}, size_divisor={self.size_divisor}, min_side={self.min_side})'
