#!/usr/bin/env bash
# Ablation of the decoder width: fine-tuning of each MAE of mae_pretrain_width.sh and of the
# default (192: main_exp_150_50), SHORT_CLS_EPOCHS (50) epochs -> <exp>/pretrain-cls/.
# Settings: environment variables of commands/common.sh. Extra arguments go to the Python
# script and override the flags here: bash commands/ft_width.sh --device cpu
set -euo pipefail
cd "$(dirname "$0")/.."
source commands/common.sh

for_ablation width finetune "${SHORT_CLS[@]}" "$@"
