#!/usr/bin/env bash
# Ablation of the mask ratio (MAE Figure 5): MAE pretraining with --mask_ratio in
# MASK_RATIOS (0.5 0.6 0.85 0.9) at the budget of main_exp_150_50 -> outputs/ablation_mask_r0.5/
# mae-pretrain/, ... The default (0.75) is main_exp_150_50's run (mae_pretrain_150.sh), not
# trained twice.
# Settings: environment variables of commands/common.sh. Extra arguments go to the Python
# script and override the flags here: bash commands/mae_pretrain_mask.sh --device cpu
set -euo pipefail
cd "$(dirname "$0")/.."
source commands/common.sh

pretrain_ablation mask "$@"
