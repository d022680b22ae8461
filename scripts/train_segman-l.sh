#!/usr/bin/env bash
# SegMAN-L ImageNet-1k pretraining.  The original has no L script: the recipe copies SegMAN-B's
# (classification/recipes.py, docs/model.md §10.3), and train.py says so.
#
#   bash scripts/train_segman-l.sh [GPUS] [DATA] [train.py options]
#
# Arguments and defaults: scripts/train_imagenet.sh.
exec bash "$(dirname "$0")/train_imagenet.sh" SegMANEncoder_l "$@"
