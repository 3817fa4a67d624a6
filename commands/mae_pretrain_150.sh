#!/usr/bin/env bash
# MAE pretraining of main_exp_150_50, SHORT_PRETRAIN_EPOCHS (150) epochs: the shorter main
# experiment and the default row (depth 4, width 192, mask 0.75) of every ablation
# -> outputs/main_exp_150_50/mae-pretrain/vit-t-mae.pt.
# Settings: environment variables of commands/common.sh. Extra arguments go to the Python
# script and override the flags here: bash commands/mae_pretrain_150.sh --device cpu
set -euo pipefail
cd "$(dirname "$0")/.."
source commands/common.sh

pretrain "$SHORT_EXP" "${SHORT_PRETRAIN[@]}" "$@"
