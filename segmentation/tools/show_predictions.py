"""Draw image | ground truth | prediction side by side for a few images of a config's test split.

    python tools/show_predictions.py CONFIG CHECKPOINT [--out predictions.png] [--num 4] [--device cpu]

One row per image (the first ``--num`` of the split, or ``--indices``), the label maps in the
config's palette, and a legend of the classes that appear.  Pixels the metric ignores (label 255,
e.g. ADE20K's unlabelled ones) are black.  Each prediction is titled with its pixel accuracy over
the labelled pixels.  ``--cfg-options`` overrides config keys, as in tools/test.py.
"""
from __future__ import annotations

import argparse
import os.path as osp
from typing import Sequence

import matplotlib
import mmcv
import numpy as np
from mmcv.utils import DictAction

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from segman_mmseg.config_checks import check_data_roots, load_config  # noqa: E402
from segman_mmseg.inference import load_segmentor, predict  # noqa: E402

IGNORE = 255
IGNORE_COLOUR = (0, 0, 0)


def colourise(seg: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """``(H, W)`` class indices → ``(H, W, 3)`` uint8 RGB; ignored pixels black."""
    lut = np.zeros((256, 3), np.uint8)
    lut[:len(palette)] = np.asarray(palette, np.uint8)
    lut[IGNORE] = IGNORE_COLOUR
    return lut[seg.astype(np.uint8)]


def ground_truth(dataset, index: int) -> np.ndarray:
    """The label map of image ``index`` in the classes the model predicts: the dataset's ``label_map`` and
    ``reduce_zero_label`` applied as its evaluation applies them (mmseg's loader leaves both to the metric)."""
    raw = dataset.get_gt_seg_map_by_idx(index)
    label = raw.copy()
    for old, new in (dataset.label_map or {}).items():
        label[raw == old] = new
    if dataset.reduce_zero_label:
        label = label.astype(np.int64) - 1
        label[label < 0] = IGNORE
        label[label == IGNORE - 1] = IGNORE
    return label.astype(np.uint8)


def draw(rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], classes: Sequence[str],
         palette: Sequence[Sequence[int]], out_file: str) -> None:
    """Write the figure: ``rows`` of (name, RGB image, ground truth, prediction)."""
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows) + 0.6), squeeze=False)
    for row, (name, image, gt, pred) in zip(axes, rows):
        labelled = gt != IGNORE
        accuracy = float(np.mean(pred[labelled] == gt[labelled])) if labelled.any() else float('nan')
        titles = (name, 'ground truth', f'prediction ({accuracy:.0%} pixel accuracy)')
        for ax, picture, title in zip(row, (image, colourise(gt, palette), colourise(pred, palette)), titles):
            ax.imshow(picture, interpolation='nearest')
            ax.set_title(title, fontsize=9)
            ax.axis('off')
    shown = np.unique(np.concatenate([np.unique(m) for _, _, gt, pred in rows for m in (gt, pred)]))
    handles = [Patch(color=np.asarray(palette[c]) / 255, label=classes[c]) for c in shown if c < len(classes)]
    if IGNORE in shown:
        handles.append(Patch(color=np.asarray(IGNORE_COLOUR) / 255, label='ignored'))
    fig.legend(handles=handles, loc='lower center', ncol=min(len(handles), 6), frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, 0.6 / fig.get_figheight(), 1, 1))
    mmcv.mkdir_or_exist(osp.dirname(osp.abspath(out_file)))
    fig.savefig(out_file, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', default='predictions.png', help='where the figure goes')
    parser.add_argument('--num', type=int, default=4, help='how many images (the first of the split)')
    parser.add_argument('--indices', type=int, nargs='+', default=None, help='which images of the split instead')
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda:0'")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default=None, help='override config keys')
    args = parser.parse_args()
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f'error: {args.checkpoint} does not exist')
    from mmseg.datasets import build_dataset

    cfg = load_config(args.config, args.cfg_options)
    check_data_roots(cfg, ('test',))
    dataset = build_dataset(cfg.data.test)  # the config's classes and palette, its label convention
    indices = args.indices if args.indices is not None else list(range(min(args.num, len(dataset))))
    if not indices or not all(0 <= i < len(dataset) for i in indices):
        raise SystemExit(f'error: choose images among the {len(dataset)} of the test split, got {indices}')
    model = load_segmentor(cfg, args.checkpoint, device=args.device)
    rows = []
    for i in indices:
        path = osp.join(dataset.img_dir, dataset.img_infos[i]['filename'])
        image = mmcv.imread(path)
        rows.append((osp.basename(path), mmcv.bgr2rgb(image), ground_truth(dataset, i), predict(model, image)))
    draw(rows, dataset.CLASSES, dataset.PALETTE, args.out)
    print(f'{len(rows)} images, ground truth and predictions drawn to {args.out}')


if __name__ == '__main__':
    main()
