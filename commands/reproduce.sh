#!/usr/bin/env bash
# The whole study in dependency order, by running the other drivers:
#   1. main_exp: MAE 600 epochs; fine-tuning and scratch 100 epochs; linear probes of the MAE
#      and of a random encoder; prediction figures;
#   2. main_exp_150_50: the same at 150 / 50 epochs (also the ablations' default row);
#   3. the decoder depth, decoder width and mask ratio ablations at the 150 / 50 budget;
#   4. report.py -> REPORT_DIR (outputs/report/results.md).
# Each stage skips itself when finished and resumes from its checkpoint when interrupted, so
# rerun this script after any stop. Multi-GPU: NPROC=8 bash commands/reproduce.sh.
# Settings: REPORT_DIR and the environment variables of commands/common.sh. Extra arguments go
# to every training stage (flags both mae_pretrain.py and train_classifier.py take).
set -euo pipefail
cd "$(dirname "$0")/.."
source commands/common.sh

REPORT_DIR=${REPORT_DIR:-$OUTPUT_ROOT/report}

MAIN=(mae_pretrain pretrain_cls scratch_cls pretrain_lin scratch_lin)
SHORT=(mae_pretrain_150 pretrain_cls_50 scratch_cls_50 lin_default_d4_w192 scratch_lin_50)
ABLATIONS=(mae_pretrain_depth ft_depth lin_depth mae_pretrain_width ft_width lin_width
           mae_pretrain_mask ft_mask lin_mask)

for driver in "${MAIN[@]}"; do
    bash "commands/$driver.sh" "$@"
done
bash commands/visualize_pred.sh
for driver in "${SHORT[@]}" "${ABLATIONS[@]}"; do
    bash "commands/$driver.sh" "$@"
done
report "$REPORT_DIR"
