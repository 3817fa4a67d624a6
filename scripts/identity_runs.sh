#!/usr/bin/env bash
# Every stage once on generated images, one thread, for checking that a refactor changes no
# number: run it before and after, then compare the two folders with identity_compare.py.
#   bash scripts/identity_runs.sh /tmp/before      # on the old commit
#   bash scripts/identity_runs.sh /tmp/after       # on the new one
#   python scripts/identity_compare.py /tmp/before /tmp/after
# The runs are written under one fixed path (RUN_ROOT) and moved to the folder given, so that
# the model files, which record their flags, compare equal too. About a minute on one core.
set -euo pipefail
[[ $# -eq 1 ]] || { echo "usage: bash scripts/identity_runs.sh OUT" >&2; exit 2; }
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
RUN_ROOT=${RUN_ROOT:-/tmp/mae_identity_run}
[[ ! -e "$1" ]] || { echo "error: $1 exists; give a new folder" >&2; exit 2; }
rm -rf "$RUN_ROOT"
trap 'mv "$RUN_ROOT" "$1"' EXIT
export OMP_NUM_THREADS=1
DATA=(--dataset fake --device cpu --image_size 16 --max_train_images 512 --max_eval_images 256
      --output_root "$RUN_ROOT" --seed 3)
ENC=(--patch_size 4 --emb_dim 32 --encoder_layer 2 --encoder_head 2)
MAE=("${DATA[@]}" "${ENC[@]}" --decoder_layer 1 --decoder_dim 32 --batch_size 128
     --warmup_epoch 1)
CLS=("${DATA[@]}" --batch_size 64 --total_epoch 2 --warmup_epoch 1)
P=$RUN_ROOT/short/mae-pretrain/vit-t-mae.pt
run() { echo "== $*"; "$PYTHON" "$@" | tail -1; }
run mae_pretrain.py "${MAE[@]}" --total_epoch 3 --exp_name short --val_split 64 --knn_freq 1
run mae_pretrain.py "${MAE[@]}" --total_epoch 2 --exp_name paper --recipe paper \
    --max_device_batch_size 64
run train_classifier.py "${CLS[@]}" --exp_name short --pretrained_model_path "$P" --val_split 64
run train_classifier.py "${CLS[@]}" --exp_name paperft --pretrained_model_path "$P" --recipe paper
run train_classifier.py "${CLS[@]}" --exp_name short --pretrained_model_path "$P" --linear_probe \
    --total_epoch 3
run train_classifier.py "${CLS[@]}" --exp_name paperlin --pretrained_model_path "$P" \
    --linear_probe --recipe paper
run train_classifier.py "${CLS[@]}" "${ENC[@]}" --exp_name short --val_split 64 \
    --early_stop_patience 1 --lr_schedule constant
run baselines.py "${DATA[@]}" --exp_name short --val_split 64 --features pixels --method linear
run baselines.py "${DATA[@]}" --exp_name short --val_split 64 --pretrained_model_path "$P" \
    --method knn
