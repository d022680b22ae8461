"""mmseg's ``LoadImageFromFile`` and ``LoadAnnotations``, naming the file that cannot be used, and the
image and label-value checks shared by evaluation, prediction and ``tools/check_dataset.py``.

mmseg's loaders turn a truncated or non-image file into ``None`` and fail later with
``'NoneType' object has no attribute 'shape'``, and take a label map of another size than its image
without a word (training then pairs misaligned pixels).  The plugin registers these subclasses under
mmseg's own names, so every config gets them: each bad file raises a ``ValueError`` with its path.
"""
from __future__ import annotations

import functools
from typing import Optional

import numpy as np
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


def too_dark_for_8_bits(image: np.ndarray) -> Optional[str]:
    """Why a 16-bit image (as stored, e.g. ``mmcv.imread(path, flag='unchanged')``) would come out nearly black
    once the loaders convert it to 8 bits by dropping the low byte, or None: 12-bit or 10-bit data stored in
    16 bits keeps its values below 4096."""
    if image.dtype != np.uint16 or image.size == 0:
        return None
    top = int(image.max())
    if top >= 4096:
        return None
    return (f"16-bit image whose values reach only {top} of 65535 (12-bit or less data): 8-bit conversion "
            f"keeps the high byte, so it becomes nearly black ({top >> 8} of 255 at most); scale it to the 16-bit "
            f"range (e.g. ×16 for 12-bit data) or save it as 8-bit")


def values_outside_classes(dataset, label: np.ndarray) -> np.ndarray:
    """The stored values of a label map (as read from its file) that are neither one of ``dataset``'s
    classes nor its ignore index, after the dataset's ``reduce_zero_label`` (0 ignored, class k stored
    as k + 1, as mmseg converts them)."""
    stored = np.unique(label).astype(np.int64)
    classes = np.where(stored == 0, dataset.ignore_index, stored - 1) if dataset.reduce_zero_label else stored
    return stored[(classes >= len(dataset.CLASSES)) & (classes != dataset.ignore_index)]


def describe_values_outside(dataset, path: str, outside: np.ndarray) -> str:
    shift = ", stored as class + 1 (reduce_zero_label)" if dataset.reduce_zero_label else ""
    return (f"{path}: values {outside[:8].tolist()} outside the {len(dataset.CLASSES)} classes{shift} "
            f"(ignore index {dataset.ignore_index})")


def check_labels_when_evaluating(dataset) -> None:
    """Make ``dataset``'s evaluation raise ``ValueError`` naming a label map with values outside its
    classes; mmseg's metrics would silently leave those pixels out."""
    read = dataset.get_gt_seg_map_by_idx

    @functools.wraps(read)
    def checked(index):
        label = read(index)
        outside = values_outside_classes(dataset, label)
        if outside.size:
            path = f"{dataset.ann_dir}/{dataset.img_infos[index]['ann']['seg_map']}"
            raise ValueError(describe_values_outside(dataset, path, outside) + "; fix the label maps or the "
                             "config's classes (tools/check_dataset.py lists every such file)")
        return label

    dataset.get_gt_seg_map_by_idx = checked
