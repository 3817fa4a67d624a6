#!/usr/bin/env bash
# Ablation of the mask ratio: linear probe of each MAE of mae_pretrain_mask.sh and of the
# default (0.75: main_exp_150_50), LIN_EPOCHS (90) epochs -> <exp>/pretrain-cls-lin/.
# Settings: environment variables of commands/common.sh. Extra arguments go to the Python
# script and override the flags here: bash commands/lin_mask.sh --device cpu
set -euo pipefail
cd "$(dirname "$0")/.."
source commands/common.sh

for_ablation mask probe "$@"
