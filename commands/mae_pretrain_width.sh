#!/usr/bin/env bash
# Ablation of the decoder width (MAE Table 1b): MAE pretraining with --decoder_dim in
# WIDTHS (64 128 256 512) at the budget of main_exp_150_50 -> outputs/ablation_width_w64/
# mae-pretrain/, ... The default (192) is main_exp_150_50's run (mae_pretrain_150.sh), not
# trained twice. The decoder heads follow the width (mae_pretrain.py --decoder_head).
# Settings: environment variables of commands/common.sh. Extra arguments go to the Python
# script and override the flags here: bash commands/mae_pretrain_width.sh --device cpu
set -euo pipefail
cd "$(dirname "$0")/.."
source commands/common.sh

pretrain_ablation width "$@"
