#!/usr/bin/env bash
# MAE pretraining of main_exp: ViT-T/2, decoder 4 x 192, mask 0.75,
# MAIN_PRETRAIN_EPOCHS (600) epochs -> outputs/main_exp/mae-pretrain/vit-t-mae.pt.
# Settings: environment variables of commands/common.sh. Extra arguments go to the Python
# script and override the flags here: bash commands/mae_pretrain.sh --device cpu
set -euo pipefail
cd "$(dirname "$0")/.."
source commands/common.sh

pretrain "$MAIN_EXP" "${MAIN_PRETRAIN[@]}" "$@"
