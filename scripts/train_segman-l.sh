#!/usr/bin/env bash
# SegMAN-L ImageNet-1k pretraining (docs/model.md §8.2, §10.3): 8 GPUs × 256 images,
# lr 1e-3 × 2048 / 1024 = 2e-3, drop-path 0.3, AMP fp16, 300 + 10 epochs.  The original has no L
# script: these are SegMAN-B's settings, our choice.
#
#   bash scripts/train_segman-l.sh [GPUS] [DATA] [train.py options]
#   GPUS=4 DATA=/data/imagenet bash scripts/train_segman-l.sh --resume output/SegMANEncoder_l-224/checkpoints/last.pth.tar
#
# GPUS defaults to 8, DATA (ImageFolder root with train/ and val/) to data/imagenet.  The batch per
# GPU stays 256; the lr follows the total batch (1e-3 per 1024 images), so fewer GPUs mean a lower lr.
# Later options override earlier ones (e.g. --batch-size 128).  Checkpoints and logs go to
# output/SegMANEncoder_l-224/ under the current folder.  PYTHON (python) runs torchrun.
set -euo pipefail
if [ $# -gt 0 ] && [[ $1 != -* ]]; then GPUS=$1; shift; fi
if [ $# -gt 0 ] && [[ $1 != -* ]]; then DATA=$1; shift; fi
REPO=$(cd "$(dirname "$0")/.." && pwd)
exec "${PYTHON:-python}" -m torch.distributed.run --standalone --nproc_per_node="${GPUS:-8}" \
    "$REPO/classification/train.py" --model SegMANEncoder_l --batch-size 256 --data-dir "${DATA:-data/imagenet}" "$@"
