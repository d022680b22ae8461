#!/usr/bin/env bash
# Multi-GPU check of tools/dist_train.sh and tools/dist_test.sh: SegMAN-T with SyncBN on the toy set.
#   [TRAIN_ARGS=--cuda-graph] bash benchmarks/dist_toy.sh [GPUS=2] [ITERS=60] [WORK_DIR=work_dirs/dist_toy]
# Prints the mean time per iteration (both ranks step together under DDP), each rank's peak GPU
# memory, and the mIoU of dist_test.sh.
set -euo pipefail
GPUS=${1:-2}
ITERS=${2:-60}
WORK=${3:-work_dirs/dist_toy}
PYTHON=${PYTHON:-python}
cd "$(dirname "$0")/../segmentation"
"$PYTHON" tools/make_toy_dataset.py data/toy_shapes --train 128 --val 20
OPTIONS="runner.max_iters=$ITERS evaluation.interval=$ITERS checkpoint_config.interval=$ITERS log_config.interval=10
 data.samples_per_gpu=8 data.workers_per_gpu=2 model.decode_head.norm_cfg.type=SyncBN"
PYTHON=$PYTHON bash tools/dist_train.sh local_configs/segman/tiny/segman_t_toy.py "$GPUS" --work-dir "$WORK" --seed 0 \
    ${TRAIN_ARGS:-} --cfg-options $OPTIONS
PYTHON=$PYTHON bash tools/dist_test.sh local_configs/segman/tiny/segman_t_toy.py "$WORK/latest.pth" "$GPUS" \
    --eval mIoU --work-dir "$WORK"
"$PYTHON" - "$WORK" "$GPUS" <<'PY'
import json, pathlib, sys
work, gpus = pathlib.Path(sys.argv[1]), int(sys.argv[2])
entries = [json.loads(l) for l in sorted(work.glob('*.log.json'))[-1].read_text().splitlines()[1:]]
times = [e['time'] for e in entries if e.get('mode') == 'train'][1:]  # skip the warm-up interval
batch = 8 * gpus
print(f'{gpus} GPUs x 8 images: {sum(times) / len(times):.3f} s/iter, '
      f'{len(times) and len(times) / sum(times):.2f} iter/s, {batch * len(times) / sum(times):.1f} images/s')
PY
