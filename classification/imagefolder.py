"""ImageFolder data for ``train.py`` and ``validate.py``: layout checks and the evaluation loader.

Layout (as ImageNet's usual preparation)::

    DATA/train/<class>/*.JPEG
    DATA/val/<class>/*.JPEG

timm's folder reader derives the classes from the image paths and numbers them in sorted order.
A class folder without images therefore vanishes silently and shifts every later label, and a
val/ with other classes than train/ mislabels the validation set; both are refused here.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import torch
from timm.data import create_dataset, create_loader, is_img_extension

__all__ = ["check_image_folder", "create_eval_loader"]

LAYOUT = "DATA/train/<class>/<image> and DATA/val/<class>/<image>"
SYNTHETIC = "python classification/make_synthetic_imagenet.py DIR"


def _has_image(folder: str) -> bool:
    with os.scandir(folder) as entries:
        return any(e.is_file() and is_img_extension(os.path.splitext(e.name)[1].lower()) for e in entries)


def _class_folders(root: str, split: str) -> list[str]:
    """Sorted class folder names of ``root/split``, each checked to hold at least one image."""
    path = os.path.join(root, split)
    if not os.path.isdir(path):
        found = sorted(e.name for e in os.scandir(root) if e.is_dir())
        raise FileNotFoundError(f"no '{split}' folder in the data dir {root!r} "
                                f"(it has: {', '.join(found) or 'nothing'}); expected {LAYOUT}")
    classes = sorted(e.name for e in os.scandir(path) if e.is_dir())
    if not classes:
        raise ValueError(f"{path!r} has no class folders; expected {LAYOUT}")
    empty = [c for c in classes if not _has_image(os.path.join(path, c))]
    if empty:
        shown = ", ".join(empty[:10]) + (f", ... ({len(empty)} in all)" if len(empty) > 10 else "")
        raise ValueError(f"{len(empty)} of {len(classes)} class folders in {path!r} hold no images: {shown}. "
                         f"Every class needs images directly inside its folder, or the labels of the later "
                         f"classes shift; remove the empty folders or fill them")
    return classes


def check_image_folder(root: str, splits: Sequence[str] = ("train", "val")) -> list[str]:
    """Check ``root/<split>/<class>/<image>`` for every split and return the class names.

    Raises:
        FileNotFoundError: ``root`` or one of its split folders is missing.
        ValueError: a split has no class folders, a class folder holds no image, or the splits
            disagree on the classes (their labels would not line up).
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data dir {root!r} not found; expected {LAYOUT} "
                                f"(a small synthetic set for trying things out: {SYNTHETIC})")
    classes = {split: _class_folders(root, split) for split in splits}
    first, *others = splits
    for split in others:
        if classes[split] != classes[first]:
            only_first = sorted(set(classes[first]) - set(classes[split]))
            only_other = sorted(set(classes[split]) - set(classes[first]))
            raise ValueError(f"'{first}' and '{split}' in {root!r} have different class folders "
                             f"(only in {first}: {only_first[:10]}; only in {split}: {only_other[:10]}), "
                             f"so their label numbers would not match")
    return classes[first]


def create_eval_loader(root: str, split: str, data_config: dict[str, Any], batch_size: int, workers: int,
                       device: torch.device, distributed: bool = False,
                       img_dtype: Optional[torch.dtype] = None) -> torch.utils.data.DataLoader:
    """timm's evaluation pipeline: resize to ``size / crop_pct``, centre crop, normalise on ``device``.

    Args:
        data_config: from ``timm.data.resolve_data_config`` (``input_size``, ``interpolation``,
            ``mean``, ``std``, ``crop_pct``, ``crop_mode``).
        distributed: shard with timm's ordered sampler (pads the last shard with repeats).
    """
    dataset = create_dataset("", root=root, split=split)
    return create_loader(
        dataset, input_size=data_config["input_size"], batch_size=batch_size, is_training=False,
        interpolation=data_config["interpolation"], mean=data_config["mean"], std=data_config["std"],
        crop_pct=data_config["crop_pct"], crop_mode=data_config.get("crop_mode"), num_workers=workers,
        distributed=distributed, device=device, img_dtype=img_dtype or torch.float32,
        pin_memory=device.type == "cuda", use_prefetcher=True)
