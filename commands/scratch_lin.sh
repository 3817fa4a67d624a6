#!/usr/bin/env bash
# Linear probe of a random (untrained) ViT-T encoder, the baseline of pretrain_lin.sh with
# the same recipe -> outputs/main_exp/scratch-cls-lin/.
# Settings: environment variables of commands/common.sh. Extra arguments go to the Python
# script and override the flags here: bash commands/scratch_lin.sh --device cpu
set -euo pipefail
cd "$(dirname "$0")/.."
source commands/common.sh

classify "$MAIN_EXP" "${LIN[@]}" "$@"
