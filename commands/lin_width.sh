#!/usr/bin/env bash
# Ablation of the decoder width: linear probe of each MAE of mae_pretrain_width.sh and of the
# default (192: main_exp_150_50), LIN_EPOCHS (90) epochs -> <exp>/pretrain-cls-lin/.
# Settings: environment variables of commands/common.sh. Extra arguments go to the Python
# script and override the flags here: bash commands/lin_width.sh --device cpu
set -euo pipefail
cd "$(dirname "$0")/.."
source commands/common.sh

for_ablation width probe "$@"
