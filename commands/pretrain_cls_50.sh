#!/usr/bin/env bash
# Fine-tuning of main_exp_150_50's MAE encoder, SHORT_CLS_EPOCHS (50) epochs, the same recipe
# and warmup as scratch_cls_50.sh -> outputs/main_exp_150_50/pretrain-cls/.
# Needs mae_pretrain_150.sh. The same run as ft_default_d4_w192.sh.
# Settings: environment variables of commands/common.sh. Extra arguments go to the Python
# script and override the flags here: bash commands/pretrain_cls_50.sh --device cpu
set -euo pipefail
cd "$(dirname "$0")/.."
source commands/common.sh

finetune "$SHORT_EXP" "${SHORT_CLS[@]}" "$@"
