#!/usr/bin/env bash
# Ablation of the decoder depth: fine-tuning of each MAE of mae_pretrain_depth.sh and of the
# default (4: main_exp_150_50), SHORT_CLS_EPOCHS (50) epochs -> <exp>/pretrain-cls/.
# Settings: environment variables of commands/common.sh. Extra arguments go to the Python
# script and override the flags here: bash commands/ft_depth.sh --device cpu
set -euo pipefail
cd "$(dirname "$0")/.."
source commands/common.sh

for_ablation depth finetune "${SHORT_CLS[@]}" "$@"
