#!/usr/bin/env bash
# Fine-tuning of the ablations' default row (depth 4, width 192: main_exp_150_50's MAE) at the
# ablation budget -> outputs/main_exp_150_50/pretrain-cls/. This is the same run, with the same
# flags, as pretrain_cls_50.sh and ft_depth.sh's first one: a finished run is skipped, so after
# either of them this is a no-op. Kept under the seed's name.
# Settings: environment variables of commands/common.sh. Extra arguments go to the Python
# script and override the flags here: bash commands/ft_default_d4_w192.sh --device cpu
set -euo pipefail
cd "$(dirname "$0")/.."
source commands/common.sh

finetune "$SHORT_EXP" "${SHORT_CLS[@]}" "$@"
