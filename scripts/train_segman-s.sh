#!/usr/bin/env bash
# SegMAN-S ImageNet-1k pretraining as the original ran it: the recipe of classification/recipes.py
# (docs/model.md §8.2).
#
#   bash scripts/train_segman-s.sh [GPUS] [DATA] [train.py options]
#
# Arguments and defaults: scripts/train_imagenet.sh.
exec bash "$(dirname "$0")/train_imagenet.sh" SegMANEncoder_s "$@"
