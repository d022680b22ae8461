"""Plot the training loss (and validation mIoU) of a work dir's ``*.log.json`` to a PNG.

    python tools/plot_loss.py WORK_DIR [--out loss_curve.png]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def read_log(work_dir: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(iteration, loss) of training entries and (iteration, mIoU) of validation entries, newest log."""
    logs = sorted(work_dir.glob('*.log.json'))
    if not logs:
        raise FileNotFoundError(f'no *.log.json in {work_dir}: has training run there?')
    losses, mious = [], []
    last_iter = 0
    for line in logs[-1].read_text().splitlines():
        entry = json.loads(line)
        if entry.get('mode') == 'train' and 'loss' in entry:
            last_iter = entry['iter']
            losses.append((last_iter, entry['loss']))
        elif entry.get('mode') == 'val' and 'mIoU' in entry:
            mious.append((last_iter, 100 * entry['mIoU']))
    return losses, mious


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('work_dir', type=Path)
    parser.add_argument('--out', type=Path, default=None, help='PNG path (default WORK_DIR/loss_curve.png)')
    args = parser.parse_args()
    losses, mious = read_log(args.work_dir)
    out = args.out or args.work_dir / 'loss_curve.png'
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(*zip(*losses), label='training loss')
    ax.set_xlabel('iteration')
    ax.set_ylabel('cross-entropy')
    if mious:
        ax2 = ax.twinx()
        ax2.plot(*zip(*mious), 'o-', color='tab:green', label='val mIoU (%)')
        ax2.set_ylabel('mIoU (%)')
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    shown = losses[::max(1, len(losses) // 8)]
    if shown[-1] != losses[-1]:
        shown.append(losses[-1])
    print('loss curve: ' + ', '.join(f'it {i}: {loss:.3f}' for i, loss in shown))
    print(f'written to {out}')


if __name__ == '__main__':
    main()
