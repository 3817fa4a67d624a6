#!/usr/bin/env bash
# Linear probe of the ablations' default row (depth 4, width 192: main_exp_150_50's MAE)
# -> outputs/main_exp_150_50/pretrain-cls-lin/. The same run, with the same flags, as
# lin_depth.sh's first one: a finished run is skipped, so after it this is a no-op.
# Settings: environment variables of commands/common.sh. Extra arguments go to the Python
# script and override the flags here: bash commands/lin_default_d4_w192.sh --device cpu
set -euo pipefail
cd "$(dirname "$0")/.."
source commands/common.sh

probe "$SHORT_EXP" "$@"
