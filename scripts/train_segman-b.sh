#!/usr/bin/env bash
# SegMAN-B ImageNet-1k pretraining as the original ran it (docs/model.md §8.2): 8 GPUs × 256 images,
# lr 1e-3 × 2048 / 1024 = 2e-3, drop-path 0.3, AMP fp16, 300 + 10 epochs.
#
#   bash scripts/train_segman-b.sh [GPUS] [DATA] [train.py options]
#   GPUS=4 DATA=/data/imagenet bash scripts/train_segman-b.sh --resume output/SegMANEncoder_b-224/checkpoints/last.pth.tar
#
# GPUS defaults to 8, DATA (ImageFolder root with train/ and val/) to data/imagenet.  The batch per
# GPU stays 256; the lr follows the total batch (1e-3 per 1024 images), so fewer GPUs mean a lower lr.
# Later options override earlier ones (e.g. --batch-size 128).  Checkpoints and logs go to
# output/SegMANEncoder_b-224/ under the current folder.  PYTHON (python) runs torchrun.
set -euo pipefail
if [ $# -gt 0 ] && [[ $1 != -* ]]; then GPUS=$1; shift; fi
if [ $# -gt 0 ] && [[ $1 != -* ]]; then DATA=$1; shift; fi
REPO=$(cd "$(dirname "$0")/.." && pwd)
exec "${PYTHON:-python}" -m torch.distributed.run --standalone --nproc_per_node="${GPUS:-8}" \
    "$REPO/classification/train.py" --model SegMANEncoder_b --batch-size 256 --data-dir "${DATA:-data/imagenet}" "$@"
