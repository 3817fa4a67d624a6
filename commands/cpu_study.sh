#!/usr/bin/env bash
# The MAE effect on real images within a 2-core CPU budget (about an hour): Fashion-MNIST and
# a small ViT (patch 4, width 64, 6 blocks; decoder 2 x 64).
#   1. MAE pretraining on PRETRAIN_IMAGES training images (seed = the first of SEEDS);
#   2. for every seed in SEEDS, with identical budgets and recipes: fine-tuning the MAE encoder
#      vs training from scratch, and a linear probe of the MAE encoder vs a linear probe of a
#      random frozen encoder, each on LABELLED training images outside a VAL_SPLIT-image
#      validation split that picks the best epoch; test accuracy on EVAL_IMAGES test images;
#   3. prediction figures, report.py, and environment.md (command, wall time, machine,
#      library versions) -> RESULTS.
# Every stage skips itself when finished and resumes when interrupted: rerun after any stop.
# The full study, with seeds, ablations, baselines and committed run files, is study.sh.
# apt-get install dataset-fashion-mnist provides the default DATA_DIR; elsewhere use
# DATA_DIR=./data to download through torchvision.
set -euo pipefail
cd "$(dirname "$0")/.."

# common.sh settings with this study's defaults (set before it fills in the rest)
DATASET=${DATASET:-fashion_mnist}
DATA_DIR=${DATA_DIR:-/usr/share/datasets/fashion-mnist}
DEVICE=${DEVICE:-cpu}
OUTPUT_ROOT=${OUTPUT_ROOT:-outputs/cpu_study}
LIN_EPOCHS=${LIN_EPOCHS:-50}
LIN_WARMUP=${LIN_WARMUP:-5}
CLS_WARMUP=${CLS_WARMUP:-2}
source commands/common.sh

RESULTS=${RESULTS:-$OUTPUT_ROOT/report}  # the committed study is commands/study.sh
EXP=${EXP:-fmnist}
SEEDS=${SEEDS:-"1 2"}
PRETRAIN_IMAGES=${PRETRAIN_IMAGES:-60000}
PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS:-15}
PRETRAIN_WARMUP=${PRETRAIN_WARMUP:-1}
PRETRAIN_LR=${PRETRAIN_LR:-1e-3}   # base lr at batch 256; ViT-T's 1.5e-4 is slow for 15 epochs
CLS_EPOCHS=${CLS_EPOCHS:-15}       # fine-tuning and scratch alike
LABELLED=${LABELLED:-5000}         # labelled training images of every classifier
VAL_SPLIT=${VAL_SPLIT:-2000}
EVAL_IMAGES=${EVAL_IMAGES:-10000}  # the whole Fashion-MNIST test split

MODEL=(--patch_size 4 --emb_dim 64 --encoder_layer 6 --encoder_head 4)
first_seed=${SEEDS%% *}
MAE_EXP="${EXP}_seed${first_seed}"
started=$(date -u +%s)

pretrain "$MAE_EXP" "${MODEL[@]}" --seed "$first_seed" --decoder_layer 2 --decoder_dim 64 \
    --norm_pix_loss --augment flip --batch_size 256 --max_device_batch_size 256 \
    --base_learning_rate "$PRETRAIN_LR" --total_epoch "$PRETRAIN_EPOCHS" \
    --warmup_epoch "$PRETRAIN_WARMUP" --max_train_images "$PRETRAIN_IMAGES" \
    --max_eval_images "$EVAL_IMAGES" --visualize_freq 5 --knn_freq 5 "$@"

CLS=(--total_epoch "$CLS_EPOCHS" --warmup_epoch "$CLS_WARMUP" --recipe "$CLS_RECIPE"
     --augment flip)
for seed in $SEEDS; do
    exp="${EXP}_seed${seed}"
    SPLIT=(--seed "$seed" --max_train_images "$LABELLED" --val_split "$VAL_SPLIT"
           --max_eval_images "$EVAL_IMAGES" --batch_size 128)
    mae=(--pretrained_model_path "$(mae_model "$MAE_EXP")")
    classify "$exp" "${SPLIT[@]}" "${CLS[@]}" "${mae[@]}" "$@"     # fine-tuned
    classify "$exp" "${SPLIT[@]}" "${CLS[@]}" "${MODEL[@]}" "$@"   # from scratch
    classify "$exp" "${SPLIT[@]}" "${LIN[@]}" "${mae[@]}" "$@"     # probe of the MAE encoder
    classify "$exp" "${SPLIT[@]}" "${LIN[@]}" "${MODEL[@]}" "$@"   # probe of a random encoder
done

mkdir -p "$RESULTS"
visualize "$MAE_EXP" --use_first_n --n 12 --save_dir "$RESULTS"
report "$RESULTS"
{
    echo "# Environment of this study"
    echo
    echo "- command: \`bash commands/cpu_study.sh $*\` (settings: SEEDS=$SEEDS" \
         "PRETRAIN_IMAGES=$PRETRAIN_IMAGES PRETRAIN_EPOCHS=$PRETRAIN_EPOCHS" \
         "CLS_EPOCHS=$CLS_EPOCHS LIN_EPOCHS=$LIN_EPOCHS LABELLED=$LABELLED" \
         "VAL_SPLIT=$VAL_SPLIT EVAL_IMAGES=$EVAL_IMAGES)"
    echo "- finished: $(date -u '+%Y-%m-%d %H:%M UTC'); wall time of this invocation:" \
         "$(( ($(date -u +%s) - started) / 60 )) min (a rerun that skips finished stages is short)"
    python -c 'import glob, json, sys
runs = glob.glob(sys.argv[1] + "/*/*/summary.json")
total = sum(json.load(open(p))["wall_seconds"] for p in runs)
print(f"- training time summed over the wall_seconds of {len(runs)} summary.json files"
      f" (training epochs only, without evaluation and start-up): {total / 60:.0f} min")' \
        "$OUTPUT_ROOT"
    echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
         "$(free -g | awk '/Mem:/ {print $2}') GiB"
    echo "- git commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    python -c 'import platform, torch, torchvision, timm, numpy
print(f"- python {platform.python_version()}, torch {torch.__version__}, torchvision "
      f"{torchvision.__version__}, timm {timm.__version__}, numpy {numpy.__version__}")'
} > "$RESULTS/environment.md"
