#!/usr/bin/env bash
# ViT-T classifier of main_exp from scratch, MAIN_CLS_EPOCHS (100) epochs, the same recipe
# and warmup as pretrain_cls.sh -> outputs/main_exp/scratch-cls/.
# Settings: environment variables of commands/common.sh. Extra arguments go to the Python
# script and override the flags here: bash commands/scratch_cls.sh --device cpu
set -euo pipefail
cd "$(dirname "$0")/.."
source commands/common.sh

classify "$MAIN_EXP" "${MAIN_CLS[@]}" "$@"
