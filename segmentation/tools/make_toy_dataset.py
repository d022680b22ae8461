"""Generate a small procedural segmentation dataset in ADE20K layout ("toy shapes").

    python tools/make_toy_dataset.py data/toy_shapes [--train 240] [--val 40] [--size 256] [--seed 0]

Layout (as ADEChallengeData2016): ``images/{training,validation}/*.jpg`` and
``annotations/{training,validation}/*.png`` with 0 = unlabelled and classes 1..5 (configs use
``reduce_zero_label=True``, like ADE20K).  Every object gets random colours, so a pixel's colour
says nothing about its class: telling a ring from a disk needs its shape (a ring's pixels look
like a disk's), and stripes from a checkerboard needs texture, i.e. spatial context.
Deterministic for a seed.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

CLASSES = ('background', 'disk', 'ring', 'stripes', 'checker')
PALETTE = [[120, 120, 120], [230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48]]


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3)


def _draw_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One ``(size, size, 3)`` uint8 image and its ``(size, size)`` uint8 label map."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # background: a random colour gradient with noise (class 1)
    c0, c1 = _colour(rng), _colour(rng)
    t = (np.cos(rng.uniform(0, np.pi)) * xx + np.sin(rng.uniform(0, np.pi)) * yy) / (2 * size) + 0.5
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    label = np.ones((size, size), np.uint8)
    for _ in range(rng.integers(3, 7)):
        kind = rng.integers(2, 6)  # file labels: 2 disk, 3 ring, 4 stripes, 5 checker
        cy, cx = rng.uniform(0.1 * size, 0.9 * size, size=2)
        r = rng.uniform(0.1 * size, 0.22 * size)
        if kind == 2:    # disk
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
        elif kind == 3:  # ring: an annulus as thick as half its radius
            d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
            mask = (d <= r) & (d >= 0.5 * r)
        else:            # textured rectangles: stripes (4) or checkerboard (5)
            h, w = rng.uniform(0.2 * size, 0.45 * size, size=2)
            mask = (np.abs(yy - cy) <= h / 2) & (np.abs(xx - cx) <= w / 2)
        if kind <= 3:
            img[mask] = _colour(rng)
        else:
            period = rng.uniform(8, 16)
            if kind == 4:
                a = rng.uniform(0, np.pi)
                phase = (np.cos(a) * xx + np.sin(a) * yy) // (period / 2) % 2
            else:
                phase = (xx // (period / 2) + yy // (period / 2)) % 2
            ca = _colour(rng)
            cb = (ca + rng.uniform(96, 160, size=3)) % 256  # clearly different, still random
            img[mask] = np.where(phase[mask][:, None] > 0, ca, cb)
        label[mask] = kind
    img = img + rng.normal(0, 8, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), label


def make_toy_dataset(root: str | Path, n_train: int = 240, n_val: int = 40, size: int = 256, seed: int = 0) -> Path:
    """Write the dataset under ``root`` (existing files are overwritten); returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (('training', n_train), ('validation', n_val)):
        img_dir, ann_dir = root / 'images' / split, root / 'annotations' / split
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        for i in tqdm(range(count), desc=f'toy shapes {split}', leave=False):
            img, label = _draw_sample(rng, size)
            Image.fromarray(img).save(img_dir / f'toy_{split}_{i:05d}.jpg', quality=95)
            Image.fromarray(label).save(ann_dir / f'toy_{split}_{i:05d}.png')
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('root', help='output folder, e.g. data/toy_shapes')
    parser.add_argument('--train', type=int, default=240, help='training images')
    parser.add_argument('--val', type=int, default=40, help='validation images')
    parser.add_argument('--size', type=int, default=256, help='image side in pixels')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    root = make_toy_dataset(args.root, args.train, args.val, args.size, args.seed)
    print(f'toy dataset ({len(CLASSES)} classes, {args.train} train / {args.val} val images) written to {root}')


if __name__ == '__main__':
    main()
