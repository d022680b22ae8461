"""Segment one image and write it with the colour-coded prediction blended over it.

    python tools/image_demo.py IMAGE CONFIG CHECKPOINT --out-file OUT.png [--device cpu] [--opacity 0.5]
"""
from __future__ import annotations

import argparse
import os.path as osp

import numpy as np

from segman_mmseg.inference import load_segmentor, overlay, predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('image', help='image file')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out-file', default='demo_prediction.png', help='where the picture goes')
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda:0'")
    parser.add_argument('--opacity', type=float, default=0.5, help='opacity of the painted prediction, (0, 1]')
    args = parser.parse_args()
    for path in (args.image, args.config, args.checkpoint):
        if not osp.isfile(path):
            raise SystemExit(f'error: {path} does not exist')

    model = load_segmentor(args.config, args.checkpoint, device=args.device)
    seg = predict(model, args.image)
    overlay(model, args.image, seg, opacity=args.opacity, out_file=args.out_file)
    present = ', '.join(f'{model.CLASSES[c]} {np.mean(seg == c):.0%}' for c in np.unique(seg))
    print(f'prediction written to {args.out_file} ({present})')


if __name__ == '__main__':
    main()
