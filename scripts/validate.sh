#!/usr/bin/env bash
# Top-1 / top-5 of an ImageNet checkpoint, e.g. a released encoder with its EMA weights:
#
#   bash scripts/validate.sh MODEL CHECKPOINT [DATA] [validate.py options]
#   bash scripts/validate.sh SegMANEncoder_s pretrained/SegMAN_Encoder_s.pth.tar /data/imagenet --use-ema
#
# DATA (ImageFolder root with val/) defaults to $DATA, else data/imagenet.  Options such as
# --use-ema, --batch-size, --amp and --results-file go to classification/validate.py.
# PYTHON (python) runs it.
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: $0 MODEL CHECKPOINT [DATA] [validate.py options]" >&2; exit 2; fi
MODEL=$1
CHECKPOINT=$2
shift 2
if [ $# -gt 0 ] && [[ $1 != -* ]]; then DATA=$1; shift; fi
REPO=$(cd "$(dirname "$0")/.." && pwd)
exec "${PYTHON:-python}" "$REPO/classification/validate.py" --model "$MODEL" --checkpoint "$CHECKPOINT" \
    --data-dir "${DATA:-data/imagenet}" "$@"
