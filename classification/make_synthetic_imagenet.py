"""Generate a small procedural classification set in ImageNet's ImageFolder layout.

    python classification/make_synthetic_imagenet.py data/synthetic_imagenet [--classes 8]
        [--train-per-class 32] [--val-per-class 8] [--size 256] [--seed 0]

Layout: ``ROOT/{train,val}/<class>/<class>_<index>.JPEG``, the class folders named
``c<nn>_<pattern>`` so that sorted order is class order.  Each class is one drawn pattern (disk,
ring, square, triangle, cross, stripes, checkerboard, dots; a colour scheme varies beyond eight
classes) at a random position, size and angle over a noisy gradient background.  Deterministic for
a seed: every image has its own generator seeded from (seed, split, class, index).  Enough to run
``train.py`` and ``validate.py`` end to end without ImageNet; the numbers mean nothing.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["PATTERNS", "make_synthetic_imagenet"]

PATTERNS = ("disk", "ring", "square", "triangle", "cross", "stripes", "checker", "dots")
SPLITS = {"train": 0, "val": 1}


def _pattern_mask(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """Boolean ``(size, size)`` mask of one pattern instance."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(0.3 * size, 0.7 * size, size=2)
    r = rng.uniform(0.18 * size, 0.3 * size)
    a = rng.uniform(0, np.pi)
    u = np.cos(a) * (xx - cx) + np.sin(a) * (yy - cy)  # rotated coordinates around the centre
    v = -np.sin(a) * (xx - cx) + np.cos(a) * (yy - cy)
    d = np.sqrt(u ** 2 + v ** 2)
    if kind == "disk":
        return d <= r
    if kind == "ring":
        return (d <= r) & (d >= 0.6 * r)
    if kind == "square":
        return (np.abs(u) <= 0.8 * r) & (np.abs(v) <= 0.8 * r)
    if kind == "triangle":  # inside three half-planes 120° apart
        return np.all([np.cos(t) * u + np.sin(t) * v <= 0.5 * r for t in (0, 2 * np.pi / 3, 4 * np.pi / 3)], axis=0)
    if kind == "cross":
        return ((np.abs(u) <= 0.25 * r) & (np.abs(v) <= r)) | ((np.abs(v) <= 0.25 * r) & (np.abs(u) <= r))
    period = rng.uniform(0.15 * r, 0.3 * r)
    inside = (np.abs(u) <= r) & (np.abs(v) <= r)
    if kind == "stripes":
        return inside & (np.floor(u / period) % 2 == 0)
    if kind == "checker":
        return inside & ((np.floor(u / period) + np.floor(v / period)) % 2 == 0)
    if kind == "dots":
        return inside & (((u % (2 * period)) - period) ** 2 + ((v % (2 * period)) - period) ** 2 <= (0.5 * period) ** 2)
    raise ValueError(f"unknown pattern {kind!r}")


def _draw(label: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """One ``(size, size, 3)`` uint8 image of class ``label``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c0, c1 = rng.uniform(0, 255, size=(2, 3))
    t = (np.cos(rng.uniform(0, np.pi)) * xx + np.sin(rng.uniform(0, np.pi)) * yy) / (2 * size) + 0.5
    img = c0 * (1 - t[..., None]) + c1 * t[..., None] + rng.normal(0, 8, size=(size, size, 3))
    scheme = label // len(PATTERNS)  # beyond eight classes, the same patterns in another hue band
    hue = (scheme * 0.37 + rng.uniform(-0.08, 0.08)) % 1.0
    colour = 255 * (0.5 + 0.5 * np.cos(2 * np.pi * (hue + np.array([0, 1 / 3, 2 / 3]))))
    img[_pattern_mask(PATTERNS[label % len(PATTERNS)], rng, size)] = colour
    return np.clip(img, 0, 255).astype(np.uint8)


def class_names(num_classes: int) -> list[str]:
    """Folder names ``c00_disk``, ``c01_ring``, ... (sorted order = label order)."""
    width = max(2, len(str(num_classes - 1)))
    return [f"c{i:0{width}d}_{PATTERNS[i % len(PATTERNS)]}" for i in range(num_classes)]


def make_synthetic_imagenet(root: str | Path, num_classes: int = 8, train_per_class: int = 32, val_per_class: int = 8,
                            size: int = 256, seed: int = 0) -> Path:
    """Write the set under ``root`` and return it as a Path (existing files are overwritten)."""
    if num_classes < 1 or train_per_class < 1 or val_per_class < 1 or size < 16:
        raise ValueError("need at least one class, one image per class and split, and a size of 16 or more")
    root = Path(root)
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for label, name in enumerate(class_names(num_classes)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                rng = np.random.default_rng([seed, SPLITS[split], label, index])
                Image.fromarray(_draw(label, rng, size)).save(folder / f"{name}_{index:05d}.JPEG", quality=90)
    return root


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("root", help="output folder (gets train/ and val/)")
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--train-per-class", type=int, default=32)
    parser.add_argument("--val-per-class", type=int, default=8)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = make_synthetic_imagenet(args.root, args.classes, args.train_per_class, args.val_per_class, args.size,
                                   args.seed)
    print(f"wrote {args.classes} classes × ({args.train_per_class} train + {args.val_per_class} val) images of "
          f"{args.size}×{args.size} to {root}")
    return root


if __name__ == "__main__":
    main()
