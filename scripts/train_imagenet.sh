#!/usr/bin/env bash
# ImageNet-1k pretraining of one SegMAN encoder with torchrun, on its variant's recipe
# (classification/recipes.py, docs/model.md §8.2).  scripts/train_segman-{t,s,b,l}.sh run it:
#
#   bash scripts/train_imagenet.sh MODEL [GPUS] [DATA] [train.py options]
#   GPUS=4 DATA=/data/imagenet bash scripts/train_segman-b.sh --resume output/SegMANEncoder_b-224/checkpoints/last.pth.tar
#
# GPUS defaults to the recipe's (8, as the original ran), DATA (ImageFolder root with train/ and val/) to
# data/imagenet.  train.py takes the batch per GPU, drop-path and precision from the recipe; the lr follows
# the total batch (1e-3 per 1024 images), so fewer GPUs mean a lower lr.  Options override the recipe
# (e.g. --batch-size 128).  Checkpoints and logs go to output/MODEL-224/ under the current folder.
# PYTHON (python) runs torchrun.
set -euo pipefail
if [ $# -lt 1 ] || [[ $1 == -* ]]; then echo "usage: $0 MODEL [GPUS] [DATA] [train.py options]" >&2; exit 2; fi
MODEL=$1
shift
if [ $# -gt 0 ] && [[ $1 != -* ]]; then GPUS=$1; shift; fi
if [ $# -gt 0 ] && [[ $1 != -* ]]; then DATA=$1; shift; fi
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
if [ -z "${GPUS:-}" ]; then  # the recipe's; an unknown MODEL stops here with the list of names
    GPUS=$(cd "$REPO/classification" && "$PY" - "$MODEL" <<'PY'
import sys
from recipes import resolve_recipe
try:
    print(resolve_recipe(sys.argv[1]).gpus)
except ValueError as exc:
    sys.exit(f"train_imagenet.sh: {exc}")
PY
)
fi
exec "$PY" -m torch.distributed.run --standalone --nproc_per_node="$GPUS" \
    "$REPO/classification/train.py" --model "$MODEL" --data-dir "${DATA:-data/imagenet}" "$@"
