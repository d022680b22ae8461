"""mmseg's ``LoadImageFromFile`` and ``LoadAnnotations``, naming the file that cannot be used.

mmseg's loaders turn a truncated or non-image file into ``None`` and fail later with
``'NoneType' object has no attribute 'shape'``, and take a label map of another size than its image
without a word (training then pairs misaligned pixels).  The plugin registers these subclasses under
mmseg's own names, so every config gets them: each bad file raises a ``ValueError`` with its path.
"""
from __future__ import annotations

from mmseg.datasets.builder import PIPELINES
from mmseg.datasets.pipelines import LoadAnnotations, LoadImageFromFile


def _path(results: dict, prefix_key: str, info_key: str, name_key: str) -> str:
    name = results[info_key][name_key]
    prefix = results.get(prefix_key)
    return name if prefix is None else f"{prefix.rstrip('/')}/{name}"


@PIPELINES.register_module(name="LoadImageFromFile", force=True)
class LoadImageNamingBadFiles(LoadImageFromFile):
    """``LoadImageFromFile`` that names a file it cannot decode."""

    def __call__(self, results: dict) -> dict:
        path = _path(results, "img_prefix", "img_info", "filename")
        try:
            return super().__call__(results)
        except (AttributeError, TypeError) as e:  # mmcv decoded nothing
            raise ValueError(f"{path}: not a readable image (truncated, or not an image file); replace or "
                             f"remove it (tools/check_dataset.py CONFIG lists every bad file at once)") from e


@PIPELINES.register_module(name="LoadAnnotations", force=True)
class LoadAnnotationsNamingBadFiles(LoadAnnotations):
    """``LoadAnnotations`` that names an unreadable label map, or one whose size differs from its image."""

    def __call__(self, results: dict) -> dict:
        path = _path(results, "seg_prefix", "ann_info", "seg_map")
        try:
            results = super().__call__(results)
        except (AttributeError, TypeError) as e:
            raise ValueError(f"{path}: not a readable label map (truncated, or not an image file)") from e
        label, image_shape = results["gt_semantic_seg"], results.get("img_shape")
        if label is None:
            raise ValueError(f"{path}: not a readable label map (truncated, or not an image file)")
        if image_shape is not None and tuple(label.shape[:2]) != tuple(image_shape[:2]):
            raise ValueError(f"{path}: label map of {label.shape[1]}×{label.shape[0]} px for an image of "
                             f"{image_shape[1]}×{image_shape[0]} px ({results.get('filename')}); labels must "
                             f"have their image's size")
        return results
