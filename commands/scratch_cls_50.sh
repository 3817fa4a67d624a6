#!/usr/bin/env bash
# ViT-T classifier of main_exp_150_50 from scratch, SHORT_CLS_EPOCHS (50) epochs, the same
# recipe and warmup as pretrain_cls_50.sh -> outputs/main_exp_150_50/scratch-cls/.
# Settings: environment variables of commands/common.sh. Extra arguments go to the Python
# script and override the flags here: bash commands/scratch_cls_50.sh --device cpu
set -euo pipefail
cd "$(dirname "$0")/.."
source commands/common.sh

classify "$SHORT_EXP" "${SHORT_CLS[@]}" "$@"
