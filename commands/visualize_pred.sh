#!/usr/bin/env bash
# Prediction figures of main_exp: test images under the fine-tuned (pretrain_cls.sh) and the
# from-scratch (scratch_cls.sh) classifier, and the MAE's reconstructions of them
# -> outputs/main_exp/visualize/. Options: python visualize_pred.py -h (--n, --indices, --seed).
# Settings: environment variables of commands/common.sh. Extra arguments go to the Python
# script and override the flags here: bash commands/visualize_pred.sh --device cpu
set -euo pipefail
cd "$(dirname "$0")/.."
source commands/common.sh

visualize "$MAIN_EXP" "$@"
