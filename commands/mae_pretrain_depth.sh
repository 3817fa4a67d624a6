#!/usr/bin/env bash
# Ablation of the decoder depth (MAE Table 1a): MAE pretraining with --decoder_layer in
# DEPTHS (1 2 6 8) at the budget of main_exp_150_50 -> outputs/ablation_depth_d1/mae-pretrain/,
# ... The default (4) is main_exp_150_50's run (mae_pretrain_150.sh), not trained twice.
# Settings: environment variables of commands/common.sh. Extra arguments go to the Python
# script and override the flags here: bash commands/mae_pretrain_depth.sh --device cpu
set -euo pipefail
cd "$(dirname "$0")/.."
source commands/common.sh

pretrain_ablation depth "$@"
