#!/usr/bin/env bash
# Linear probe of a random (untrained) ViT-T encoder, the baseline of lin_default_d4_w192.sh
# with the same recipe -> outputs/main_exp_150_50/scratch-cls-lin/.
# Settings: environment variables of commands/common.sh. Extra arguments go to the Python
# script and override the flags here: bash commands/scratch_lin_50.sh --device cpu
set -euo pipefail
cd "$(dirname "$0")/.."
source commands/common.sh

classify "$SHORT_EXP" "${LIN[@]}" "$@"
