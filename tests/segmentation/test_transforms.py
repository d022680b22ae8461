"""AlignedResize (docs/model.md §8.1): keep-ratio rescale, then both sides resized up to multiples of 32."""
import numpy as np

import segman_mmseg  # noqa: F401
from segman_mmseg.transforms import AlignedResize


def test_aligned_resize_rounds_both_sides_up_to_32():
    img = np.random.default_rng(0).integers(0, 255, (300, 451, 3), dtype=np.uint8)
    label = np.zeros((300, 451), np.uint8)
    label[:, 200:] = 7
    results = dict(img=img, gt_semantic_seg=label, seg_fields=["gt_semantic_seg"], ori_shape=img.shape,
                   scale=(2048, 512))
    out = AlignedResize(img_scale=(2048, 512), keep_ratio=True, size_divisor=32)(results)
    # keep ratio: 300x451 -> 512x770 (short side 512), then up to multiples of 32: 512x800
    assert out["img"].shape == (512, 800, 3)
    assert out["img_shape"] == (512, 800, 3)
    assert out["gt_semantic_seg"].shape == (512, 800)
    assert set(np.unique(out["gt_semantic_seg"])) == {0, 7}  # nearest neighbour: no new labels
    np.testing.assert_allclose(out["scale_factor"], [800 / 451, 512 / 300] * 2, rtol=1e-6)


def test_aligned_resize_enlarges_a_short_side_to_min_size():
    """A 640×480 photo under the toy config's (256, 256) rescale: 256×192, then 224 px short side."""
    img = np.zeros((480, 640, 3), np.uint8)
    results = dict(img=img, seg_fields=[], ori_shape=img.shape, scale=(256, 256))
    out = AlignedResize(img_scale=(256, 256), keep_ratio=True, size_divisor=32, min_side=224)(results)
    assert out["img"].shape == (224, 320, 3)  # 192 → 224 (×7/6): 256 → 298.7 → 320
