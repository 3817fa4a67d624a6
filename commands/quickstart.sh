#!/usr/bin/env bash
# The whole chain with a tiny ViT (width 64, 4 blocks, patch 4) on a small subset, in a few
# minutes on a laptop CPU: MAE pretraining, fine-tuning, linear probe of the MAE encoder,
# linear probe of a random encoder, a classifier from scratch (same recipe and epochs as the
# fine-tuning), prediction figures and the report.
#   -> outputs/quickstart/quickstart/<stage>/, outputs/quickstart/quickstart/visualize/,
#      outputs/quickstart/report/results.md
# DATASET defaults to shapes (generated shapes an MAE can learn to fill in) so it runs offline;
# DATASET=cifar10 bash commands/quickstart.sh uses real data (downloaded to DATA_DIR once).
# The report reads only OUTPUT_ROOT (outputs/quickstart), so the study's report stays clean.
# Settings: the variables below and those of commands/common.sh. Extra arguments go to every
# training stage (flags both mae_pretrain.py and train_classifier.py take, e.g. --device cpu).
# Rerunning skips finished stages and resumes an interrupted one.
set -euo pipefail
cd "$(dirname "$0")/.."

# quickstart defaults of common.sh settings (set before it fills in the rest)
DATASET=${DATASET:-shapes}
OUTPUT_ROOT=${OUTPUT_ROOT:-outputs/quickstart}
CLS_WARMUP=${CLS_WARMUP:-1}
LIN_EPOCHS=${LIN_EPOCHS:-20}        # cheap: the frozen features are computed once
LIN_WARMUP=${LIN_WARMUP:-2}
source commands/common.sh

EXP=${EXP:-quickstart}
PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS:-12}
PRETRAIN_WARMUP=${PRETRAIN_WARMUP:-1}
PRETRAIN_LR=${PRETRAIN_LR:-1e-3}     # base lr; the tiny model learns little at ViT-T's 1.5e-4
CLS_EPOCHS=${CLS_EPOCHS:-4}          # fine-tuning and scratch alike
TRAIN_IMAGES=${TRAIN_IMAGES:-2048}   # first N training images, for every stage
EVAL_IMAGES=${EVAL_IMAGES:-512}      # first N test images
BATCH_SIZE=${BATCH_SIZE:-128}        # every stage; small, so that a tiny subset gives steps
# A tiny model's ops gain nothing from more CPU threads, and on busy shared cores extra threads
# make them many times slower.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

MODEL=(--patch_size 4 --emb_dim 64 --encoder_layer 4 --encoder_head 2)
STAGE=(--max_train_images "$TRAIN_IMAGES" --max_eval_images "$EVAL_IMAGES"
       --batch_size "$BATCH_SIZE")
CLS=(--total_epoch "$CLS_EPOCHS" --warmup_epoch "$CLS_WARMUP" --recipe "$CLS_RECIPE")

pretrain "$EXP" "${MODEL[@]}" --decoder_layer 2 --decoder_dim 64 "${STAGE[@]}" \
    --total_epoch "$PRETRAIN_EPOCHS" --warmup_epoch "$PRETRAIN_WARMUP" \
    --base_learning_rate "$PRETRAIN_LR" "$@"
finetune "$EXP" "${STAGE[@]}" "${CLS[@]}" "$@"
probe "$EXP" "${STAGE[@]}" "$@"
classify "$EXP" "${STAGE[@]}" "${LIN[@]}" "${MODEL[@]}" "$@"  # random-encoder probe
classify "$EXP" "${STAGE[@]}" "${CLS[@]}" "${MODEL[@]}" "$@"  # scratch
visualize "$EXP" --max_eval_images "$EVAL_IMAGES"
report "$OUTPUT_ROOT/report"
