#!/usr/bin/env bash
# Fine-tuning of main_exp's MAE encoder, MAIN_CLS_EPOCHS (100) epochs, the same recipe and
# warmup as scratch_cls.sh -> outputs/main_exp/pretrain-cls/. Needs mae_pretrain.sh.
# Settings: environment variables of commands/common.sh. Extra arguments go to the Python
# script and override the flags here: bash commands/pretrain_cls.sh --device cpu
set -euo pipefail
cd "$(dirname "$0")/.."
source commands/common.sh

finetune "$MAIN_EXP" "${MAIN_CLS[@]}" "$@"
