"""Scan a config's dataset splits up front and list every file training or evaluation would trip on.

    python tools/check_dataset.py local_configs/segman/small/segman_s_ade.py [--splits train val]

For each image of each split: the image decodes (and, if 16-bit, uses more than 12 bits: see
``segman_mmseg.loading.too_dark_for_8_bits``); its label map exists, decodes, has the image's
size, and holds only classes ``0..num_classes-1`` or the ignore index once the dataset's own label
conversion (``reduce_zero_label``, class subsets) is applied.  An empty split is reported too.
Prints one line per problem and a summary; exits with 1 if anything is wrong.
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys
from typing import Iterator

import mmcv
from mmcv.utils import DictAction
from tqdm import tqdm

import segman_mmseg  # noqa: F401  (registers SegMAN types)
from segman_mmseg.config_checks import check_data_roots, load_config
from segman_mmseg.loading import describe_values_outside, too_dark_for_8_bits, values_outside_classes


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="List every unusable file of a config's dataset")
    parser.add_argument("config", help="config file")
    parser.add_argument("--splits", nargs="+", default=["train", "val"], choices=("train", "val", "test"))
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default=None,
                        help="override config keys, e.g. data.train.data_root=/data/ade")
    return parser.parse_args(argv)


def check_split(dataset) -> Iterator[str]:
    """One message per problem of ``dataset`` (an mmseg ``CustomDataset``)."""
    if len(dataset) == 0:
        yield f"no images in {dataset.img_dir} (suffix {dataset.img_suffix})"
        return
    for index in tqdm(range(len(dataset)), desc=osp.basename(dataset.img_dir.rstrip("/")), leave=False):
        info = dataset.img_infos[index]
        image_path = osp.join(dataset.img_dir, info["filename"])
        image = mmcv.imread(image_path, flag="unchanged")
        if image is None:
            yield f"{image_path}: not a readable image"
        elif (dark := too_dark_for_8_bits(image)) is not None:
            yield f"{image_path}: {dark}"
        if dataset.ann_dir is None:
            continue
        label_path = osp.join(dataset.ann_dir, info["ann"]["seg_map"])
        if not osp.isfile(label_path):
            yield f"{label_path}: missing (the label map of {image_path})"
            continue
        try:
            label = dataset.get_gt_seg_map_by_idx(index)
        except Exception:  # mmcv decoded nothing
            label = None
        if label is None:
            yield f"{label_path}: not a readable label map"
            continue
        if image is not None and label.shape[:2] != image.shape[:2]:
            yield f"{label_path}: {label.shape[1]}×{label.shape[0]} px, its image {image.shape[1]}×{image.shape[0]}"
        outside = values_outside_classes(dataset, label)
        if outside.size:
            yield describe_values_outside(dataset, label_path, outside)


def main(argv=None) -> int:
    args = parse_args(argv)
    from mmseg.datasets import build_dataset

    cfg = load_config(args.config, args.cfg_options)
    check_data_roots(cfg, tuple(args.splits))
    problems = 0
    for split in args.splits:
        dataset = build_dataset(cfg.data[split])
        found = list(check_split(dataset))
        for message in found:
            print(f"{split}: {message}")
        print(f"{split}: {len(dataset)} images, {len(found)} problem(s)", file=sys.stderr)
        problems += len(found)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
