#!/usr/bin/env bash
# Linear probe of main_exp's MAE encoder, LIN_EPOCHS (90) epochs, the same recipe as
# scratch_lin.sh -> outputs/main_exp/pretrain-cls-lin/. Needs mae_pretrain.sh.
# Settings: environment variables of commands/common.sh. Extra arguments go to the Python
# script and override the flags here: bash commands/pretrain_lin.sh --device cpu
set -euo pipefail
cd "$(dirname "$0")/.."
source commands/common.sh

probe "$MAIN_EXP" "$@"
