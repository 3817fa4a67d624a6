#!/usr/bin/env bash
# The real-image study of issue 13 on Fashion-MNIST, in parts that each fit a session on 2 CPU
# cores (measured times: results/fashion_mnist_study/environment/<part>_<time>.md):
#   PART=main       3 pretraining seeds; for each: fine-tune, scratch (same epochs), linear
#                   probe, random-encoder probe, kNN
#   PART=baselines  linear probe and kNN on raw pixels; the mask-ratio ablation (0.5, 0.9)
#   PART=long       the long budget (LONG_FACTOR x the epochs), for every seed: scratch, and
#                   fine-tuning of PART=main's encoder (like for like with the long scratch)
#   PART=depth      decoder depth ablation (DEPTHS; the main arm's depth is the default row)
#   PART=width      decoder width ablation (WIDTHS, 0.5x-4x the encoder width)
#   PART=search     validation-only search: probe lr, pooling, block, norm_pix_loss, lr,
#                   pretraining images x epochs
#   PART=report     results.md and figures from the committed run files (report.py)
#   no PART         every part in that order
# Every arm uses the same labelled subset (LABELLED training images, VAL_SPLIT of them held out
# for selection) and the whole test split. Each part copies its runs' args.json, metrics.csv and
# summary.json to RESULTS/runs/ and writes RESULTS/environment/<part>_<time>.md when it ends
# (commands/study_lib.sh: whatever RESULTS lacks, so a rerun finishes a failed copy); commit
# them. Every stage skips itself when finished and resumes when interrupted: rerun the
# same command after any stop. SMOKE=1 runs every arm in minutes on generated images (tests).
#   PART=main bash commands/study.sh
#   SMOKE=1 OUTPUT_ROOT=/tmp/o RESULTS=/tmp/r bash commands/study.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${SMOKE:-}" ]]; then  # tiny sizes on generated images: every arm in a few minutes
    DATASET=${DATASET:-fake}
    OUTPUT_ROOT=${OUTPUT_ROOT:-outputs/study_smoke}
    RESULTS=${RESULTS:-outputs/study_smoke_results}
    SIZE=(--image_size 16)
    MODEL=(--patch_size 4 --emb_dim 32 --encoder_layer 2 --encoder_head 2)
    : "${WIDTHS:=16 64 128}" "${DECODER_DIM:=32}" "${PRETRAIN_IMAGES:=64}"
    : "${PRETRAIN_EPOCHS:=1}" "${PRETRAIN_WARMUP:=0}" "${CLS_EPOCHS:=1}" "${CLS_WARMUP:=0}"
    : "${LIN_EPOCHS:=1}" "${LIN_WARMUP:=0}" "${LABELLED:=64}" "${VAL_SPLIT:=16}"
    : "${EVAL_IMAGES:=32}" "${BATCH:=32}" "${SEARCH_IMAGES:=96}" "${SEARCH_EPOCHS:=1}"
    : "${SEARCH_BLOCK:=0}"
else
    SIZE=()
    MODEL=(--patch_size 4 --emb_dim 64 --encoder_layer 6 --encoder_head 4)
fi
# common.sh settings with this study's defaults (set before it fills in the rest)
DATASET=${DATASET:-fashion_mnist}
DATA_DIR=${DATA_DIR:-/usr/share/datasets/fashion-mnist}
DEVICE=${DEVICE:-cpu}
OUTPUT_ROOT=${OUTPUT_ROOT:-outputs/study}
LIN_EPOCHS=${LIN_EPOCHS:-50}
LIN_WARMUP=${LIN_WARMUP:-5}
CLS_WARMUP=${CLS_WARMUP:-1}
DEPTHS=${DEPTHS:-"1 4 8"}          # with the main arm's 2: 1, 2, 4, 8
WIDTHS=${WIDTHS:-"32 128 256"}     # with the main arm's 64: 0.5x, 1x, 2x, 4x the encoder width
source commands/common.sh

RESULTS=${RESULTS:-results/fashion_mnist_study}
PART=${PART:-all}
SEEDS=${SEEDS:-"1 2 3"}            # pretraining seeds of the main arm (and its classifiers')
ABLATION_SEED=${ABLATION_SEED:-1}  # ablation rows: one pretraining seed (noise floor: main arm)
DECODER_LAYER=${DECODER_LAYER:-2}  # the main arm's decoder and mask; one changes per ablation
DECODER_DIM=${DECODER_DIM:-64}
MASK=${MASK:-0.75}
MASKS=${MASKS-"0.5 0.9"}           # with the main arm's 0.75 (MASKS="": none)
PRETRAIN_IMAGES=${PRETRAIN_IMAGES:-15000}
PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS:-10}
PRETRAIN_WARMUP=${PRETRAIN_WARMUP:-1}
PRETRAIN_LR=${PRETRAIN_LR:-1e-3}   # base lr at batch 256; ViT-T's 1.5e-4 is slow for 10 epochs
CLS_EPOCHS=${CLS_EPOCHS:-8}        # fine-tuning and scratch alike
LONG_FACTOR=${LONG_FACTOR:-4}      # scratch at the long budget: LONG_FACTOR x CLS_EPOCHS
LABELLED=${LABELLED:-5000}         # labelled training images of every classifier and baseline
VAL_SPLIT=${VAL_SPLIT:-2000}       # of them held out: selection (best epoch, search) only
EVAL_IMAGES=${EVAL_IMAGES:-10000}  # the whole Fashion-MNIST test split
BATCH=${BATCH:-128}
PROBE_LRS=${PROBE_LRS:-"0.001 0.01 0.1 1.0"}  # the validation-only probe lr sweep
SEARCH_IMAGES=${SEARCH_IMAGES:-60000}  # search: every training image (4x the main arm's), same epochs
SEARCH_EPOCHS=${SEARCH_EPOCHS:-10}
SEARCH_LR=${SEARCH_LR:-3e-3}
SEARCH_BLOCK=${SEARCH_BLOCK:-2}    # an intermediate encoder block (0-based) for the probe
# the settings each environment record lists (study_lib.sh: run_part, environment)
ENV_SETTINGS=(SMOKE SEEDS PRETRAIN_IMAGES PRETRAIN_EPOCHS CLS_EPOCHS LIN_EPOCHS LABELLED VAL_SPLIT
              EVAL_IMAGES OMP_NUM_THREADS)
source commands/study_lib.sh

SPLIT=(--max_train_images "$LABELLED" --val_split "$VAL_SPLIT" --max_eval_images "$EVAL_IMAGES"
       --batch_size "$BATCH" ${SIZE[@]+"${SIZE[@]}"})
CLS=(--total_epoch "$CLS_EPOCHS" --warmup_epoch "$CLS_WARMUP" --recipe "$CLS_RECIPE"
     --augment flip)
LONG_CLS=(--total_epoch $((LONG_FACTOR * CLS_EPOCHS)) --warmup_epoch "$CLS_WARMUP"
          --recipe "$CLS_RECIPE" --augment flip)
DECODER=(--decoder_layer "$DECODER_LAYER" --decoder_dim "$DECODER_DIM" --mask_ratio "$MASK")

NORM_PIX=(--norm_pix_loss)  # the main arm's target; a search row drops it
# ${A[@]+"${A[@]}"}: an array that may be empty, under set -u on bash 3.2 too

# mae EXP SEED FLAGS...: MAE pretraining of the study's encoder (FLAGS change the defaults).
mae() {
    local exp=$1 seed=$2
    shift 2
    pretrain "$exp" "${MODEL[@]}" ${SIZE[@]+"${SIZE[@]}"} --seed "$seed" "${DECODER[@]}" \
        ${NORM_PIX[@]+"${NORM_PIX[@]}"} \
        --augment flip --batch_size 256 --max_device_batch_size 256 \
        --base_learning_rate "$PRETRAIN_LR" --total_epoch "$PRETRAIN_EPOCHS" \
        --warmup_epoch "$PRETRAIN_WARMUP" --max_train_images "$PRETRAIN_IMAGES" \
        --max_eval_images "$EVAL_IMAGES" --visualize_freq "$PRETRAIN_EPOCHS" --knn_freq 0 "$@"
}

# baseline EXP FLAGS...: baselines.py (probe or kNN on frozen features) on the study's split.
baseline() {
    local exp=$1
    shift
    launch baselines.py "${DATA[@]}" --device "$DEVICE" --output_root "$OUTPUT_ROOT" \
        --exp_name "$exp" "${SPLIT[@]}" "$@"
}
probe_flags() { echo --total_epoch "$LIN_EPOCHS" --warmup_epoch "$LIN_WARMUP"; }

# arm EXP SEED FLAGS...: pretrain, then fine-tune, linear probe and kNN of that encoder.
arm() {
    local exp=$1 seed=$2
    shift 2
    mae "$exp" "$seed" "$@"
    local enc=(--pretrained_model_path "$(mae_model "$exp")" --seed "$seed")
    classify "$exp" "${SPLIT[@]}" "${CLS[@]}" "${enc[@]}"
    classify "$exp" "${SPLIT[@]}" "${LIN[@]}" "${enc[@]}"
    baseline "$exp" --method knn "${enc[@]}"
}

part_main() {
    local seed
    for seed in $SEEDS; do
        arm "main_seed$seed" "$seed"
        local exp="main_seed$seed"
        classify "$exp" "${SPLIT[@]}" "${CLS[@]}" "${MODEL[@]}" --seed "$seed"  # scratch
        classify "$exp" "${SPLIT[@]}" "${LIN[@]}" "${MODEL[@]}" --seed "$seed"  # random enc.
        PART_EXPS+=("$exp")
    done
}

part_baselines() {
    local seed=${SEEDS%% *}
    PART_EXPS+=(baseline_seed1)
    baseline baseline_seed1 --features pixels --method linear $(probe_flags) --seed "$seed"
    baseline baseline_seed1 --features pixels --method knn
    ablation mask_r --mask_ratio $MASKS
}

# Scratch "that has had its chance" (its validation accuracy levels off by the long budget's
# end: results.md's curves) against a fine-tune of the same length. Like the search, it first
# retrains PART=main's encoders on a fresh machine (skipped when finished).
part_long() {
    local seed
    for seed in $SEEDS; do
        mae "main_seed$seed" "$seed"
        classify "scratch_long_seed$seed" "${SPLIT[@]}" "${LONG_CLS[@]}" "${MODEL[@]}" \
            --seed "$seed"
        classify "ft_long_seed$seed" "${SPLIT[@]}" "${LONG_CLS[@]}" --seed "$seed" \
            --pretrained_model_path "$(mae_model "main_seed$seed")"
        PART_EXPS+=("scratch_long_seed$seed" "ft_long_seed$seed")
    done
}

# ablation PREFIX FLAG VALUES...: one arm per value of one pretraining flag, named
# PREFIX<value>_seed<ABLATION_SEED>; every other setting is the main arm's.
ablation() {
    local prefix=$1 flag=$2 value exp
    shift 2
    for value in "$@"; do
        exp="${prefix}${value}_seed$ABLATION_SEED"
        arm "$exp" "$ABLATION_SEED" "$flag" "$value"
        PART_EXPS+=("$exp")
    done
}

part_depth() {
    ablation depth_d --decoder_layer $DEPTHS
}

part_width() {  # decoder heads: mae_pretrain.py's default, one per 64 channels
    ablation width_w --decoder_dim $WIDTHS
}

# The search selects on the validation split only (best_val_acc); probes are trained on the
# LABELLED - VAL_SPLIT images like every other probe. Its rows vary one thing each. It probes
# PART=main's first-seed encoder; on a fresh machine (outputs/ does not travel) that
# pretraining runs again first, and the probes record its sha256.
part_search() {
    local seed=$ABLATION_SEED lr
    mae "main_seed$seed" "$seed"  # finished: skipped; else the same command as PART=main's
    local enc=(--pretrained_model_path "$(mae_model "main_seed$seed")" --seed "$seed")
    for lr in $PROBE_LRS; do  # the probe lr (item 5), on train_classifier.py's probe
        classify "probe_lr${lr}_seed$seed" "${SPLIT[@]}" "${LIN[@]}" "${enc[@]}" \
            --base_learning_rate "$lr"
        PART_EXPS+=("probe_lr${lr}_seed$seed")
    done
    local feature pool block
    for feature in "mean -1" "cls $SEARCH_BLOCK" "mean $SEARCH_BLOCK"; do
        read -r pool block <<< "$feature"
        local exp="search_pool${pool}_block${block}_seed$seed"
        baseline "$exp" --method linear $(probe_flags) "${enc[@]}" --pool "$pool" --block "$block"
        baseline "$exp" --method knn "${enc[@]}" --pool "$pool" --block "$block"
        PART_EXPS+=("$exp")
    done
    # The last variant combines the two single changes whose probes scored best on the
    # validation split (results.md's search table), added after the first three had run.
    local variant images="images${SEARCH_IMAGES}x$SEARCH_EPOCHS"
    local more=(--max_train_images "$SEARCH_IMAGES" --total_epoch "$SEARCH_EPOCHS")
    for variant in nonormpix "lr$SEARCH_LR" "$images" "${images}_nonormpix"; do
        local exp="search_${variant}_seed$seed" flags=()
        case $variant in
            nonormpix) flags=(--no_norm_pix) ;;
            lr*) flags=(--base_learning_rate "$SEARCH_LR") ;;
            images*_nonormpix) flags=(--no_norm_pix "${more[@]}") ;;
            images*) flags=("${more[@]}") ;;
        esac
        search_arm "$exp" "$seed" "${flags[@]}"
        PART_EXPS+=("$exp")
    done
}

# search_arm EXP SEED FLAGS...: a pretraining variant judged by its probe and kNN (no
# fine-tuning); --no_norm_pix first drops the main arm's --norm_pix_loss.
search_arm() {
    local exp=$1 seed=$2 NORM_PIX=("${NORM_PIX[@]}")
    shift 2
    if [[ "${1:-}" == --no_norm_pix ]]; then
        NORM_PIX=()
        shift
    fi
    mae "$exp" "$seed" "$@"
    local enc=(--pretrained_model_path "$(mae_model "$exp")" --seed "$seed")
    classify "$exp" "${SPLIT[@]}" "${LIN[@]}" "${enc[@]}"
    baseline "$exp" --method knn "${enc[@]}"
}

part_report() {
    python report.py --outputs_root "$RESULTS/runs" --out "$RESULTS" --ablation_base main \
        --environment "$RESULTS/environment"
}

case $PART in
    main | baselines | long | depth | width | search) run_part "$PART" ;;
    report) part_report ;;
    all)
        for part in main baselines long depth width search; do
            run_part "$part"
        done
        part_report
        ;;
    *) echo "error: PART must be main, baselines, long, depth, width, search, report or" \
            "empty, got '$PART'" >&2; exit 2 ;;
esac
