#!/usr/bin/env bash
# Study v3 on Fashion-MNIST: the headline question (H: is the MAE representation
# worth having against tuned pixel baselines and a converged scratch model?) and the seed's
# question (T: the paper's Table 1, decoder depth / width and mask ratio), paired by seed.
# v3 keeps v2's settings (results/fashion_mnist_study_v2: its pilot's choice is
# MAIN_* below) and adds: five headline seeds, every headline encoder read out at
# READOUT_POOLS x READOUT_BLOCKS (the report chooses one read-out on validation), and the
# decoder-depth endpoints at the headline budget (PART=head_depth).
# Parts, each at most about 70 min on 2 CPU cores (v2's measured times; the measured times
# land in RESULTS/environment/<part>_<time>.md):
#   PART=pilot      one seed, cheap budget, validation only: base, nonormpix, learnedpos and a
#                   bigger decoder; each with the tuned probe and kNN (~22 min). v2's choice
#                   (results.md's pilot table there) is frozen in MAIN_* below
#   PART=head       per seed (run PART=head SEEDS="1 2", then "3 4", then 5): pretraining on
#                   all 58,000 non-validation images for HEAD_EPOCHS, the tuned probe and kNN
#                   of each read-out of its encoder and of a random encoder, and a fine-tune
#                   with scratch's budget and stopping rule (v2, without the read-out grid:
#                   56.8 min for two seeds at JOBS=2)
#   PART=head_depth decoder depth HEAD_DEPTHS at the headline budget, paired with head_seed<s>
#                   (depth 1 ~35 min per seed; depth 8 ~2.5x the default's pretraining: run
#                   it per seed, JOBS=2 with another arm; a part stopped after 70 min resumes)
#   PART=scratch    from scratch until validation accuracy stops improving, at each of CLS_LRS
#                   (v2, one lr: 20-30 min per seed, stopping after 55-67 epochs; run it
#                   per seed: SEEDS=1, ...). The head's fine-tunes take the same lrs; the
#                   report keeps, per seed, the lr with the best validation accuracy
#   PART=pixels     tuned pixel probes (full and PCA to the encoder's width) per seed; pixel
#                   kNN and PCA kNN (deterministic) for seed 1 only (~3 min)
#   PART=abl_depth  decoder depth 1 vs 8 (measured: 35.9 min at JOBS=2, the default row done)
#   PART=abl_width  decoder width 0.5x vs 4x the encoder's (measured: 45.2 min at JOBS=2)
#   PART=abl_mask   mask ratio 0.5 vs 0.9 (measured: 38.8 min with the default row)
#                   Each ablation row: cheap-budget pretraining with the main arm's settings
#                   but one, a short fine-tune and the tuned probe, 3 seeds, paired by seed
#                   with the default row abl_default_seed<s>, which the first ablation part
#                   trains and later ones skip once its runs are in RESULTS/runs/
#   PART=report     results.md and figures from the committed run files (report.py)
#   no PART         every part in that order (freeze the pilot's choice first)
# v2 measured 5.6 hours in all, summed over the parts' invocations (its results.md's parts
# table; some overlapped). Every classifier and baseline uses the same labelled split
# (LABELLED training images after VAL_SPLIT are held out for every choice) and the whole test
# split; every pretraining draws from the training split minus those VAL_SPLIT images. Each
# part copies its runs' args.json, metrics.csv and summary.json to RESULTS/runs/ and writes
# RESULTS/environment/<part>_<time>.md when it ends (commands/study_lib.sh: whatever RESULTS
# lacks, so a rerun finishes a failed copy): commit them. Every stage skips itself
# when finished and resumes when interrupted: rerun the same command after any stop (a part
# on a fresh machine pretrains again the encoders it needs). JOBS=2 runs a part's independent
# arms two at a time, one thread each (logs: OUTPUT_ROOT/logs/). SMOKE=1: every part in
# minutes on generated images (tests/test_study_driver.py).
#   PART=pilot bash commands/study.sh
#   PART=head SEEDS="1 2" bash commands/study.sh
#   SMOKE=1 OUTPUT_ROOT=/tmp/o RESULTS=/tmp/r PART=head SEEDS=1 bash commands/study.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# setting_error NAME ACCEPTS: the one error line of a setting the driver refuses (exit 2)
setting_error() {
    echo "error: $1 must be $2, got '${!1}'" >&2
    exit 2
}
# matching PATTERN WHAT NAME...: each setting NAME matches PATTERN, else setting_error
matching() {
    local pattern=$1 what=$2 name
    shift 2
    for name in "$@"; do
        [[ ${!name} =~ $pattern ]] || setting_error "$name" "$what"
    done
}
whole_numbers() { matching '^[0-9]{1,9}$' "a whole number" "$@"; }
whole_number_lists() {
    matching '^[0-9]{1,9}( [0-9]{1,9})*$' "whole numbers separated by spaces" "$@"
}
SMOKE=${SMOKE:-}
[[ -z $SMOKE || $SMOKE == 0 || $SMOKE == 1 ]] ||
    setting_error SMOKE "1 (smoke mode), 0 or empty (the study)"
if [[ $SMOKE == 1 ]]; then  # tiny sizes on generated images: every part in a few minutes
    DATASET=${DATASET:-fake}
    OUTPUT_ROOT=${OUTPUT_ROOT:-outputs/study_v3_smoke}
    RESULTS=${RESULTS:-outputs/study_v3_smoke_results}
    SIZE=(--image_size 16)
    : "${EMB_DIM:=32}" "${ENCODER_LAYER:=2}" "${ENCODER_HEAD:=2}"
    : "${BASE_DECODER_LAYER:=1}" "${BASE_DECODER_DIM:=32}" "${PILOT_DECODER_LAYER:=2}"
    : "${PILOT_DECODER_DIM:=64}" "${ABL_DEPTHS:=1 2}"
    : "${PRETRAIN_IMAGES:=64}" "${PRETRAIN_EPOCHS:=1}" "${PRETRAIN_WARMUP:=0}"
    : "${PRETRAIN_BATCH:=32}" "${HEAD_IMAGES:=96}" "${HEAD_EPOCHS:=2}" "${HEAD_KNN_FREQ:=1}"
    : "${LABELLED:=64}" "${VAL_SPLIT:=16}" "${EVAL_IMAGES:=32}" "${BATCH:=32}"
    : "${MAX_EPOCHS:=3}" "${PATIENCE:=1}" "${CLS_WARMUP:=0}" "${ABL_CLS_EPOCHS:=1}"
    : "${ABL_CLS_WARMUP:=0}" "${LIN_EPOCHS:=1}" "${LIN_WARMUP:=0}" "${READOUT_BLOCKS:=0 -1}"
    : "${HEAD_DEPTHS:=1}" "${CLS_LRS:=1e-3 2e-3}"
else
    SIZE=()
fi
# common.sh settings with this study's defaults (set before it fills in the rest)
DATASET=${DATASET:-fashion_mnist}
DATA_DIR=${DATA_DIR:-/usr/share/datasets/fashion-mnist}
DEVICE=${DEVICE:-cpu}
OUTPUT_ROOT=${OUTPUT_ROOT:-outputs/study_v3}
LIN_EPOCHS=${LIN_EPOCHS:-50}       # baselines.py's linear probe: epochs (each grid cell keeps
LIN_WARMUP=${LIN_WARMUP:-5}        # its best validation epoch) and warmup epochs
CLS_WARMUP=${CLS_WARMUP:-5}        # scratch and the head's fine-tune: warmup epochs
source commands/common.sh

RESULTS=${RESULTS:-results/fashion_mnist_study_v3}
PART=${PART:-all}
SEEDS=${SEEDS:-"1 2 3"}            # seeds of every 3-seed arm (a part may run one: SEEDS=2)
PILOT_SEED=${PILOT_SEED:-1}        # the pilot's one seed
PIXEL_KNN_SEED=${PIXEL_KNN_SEED:-1}  # pixel kNN is deterministic: run with this seed only
# The fastest CPU configuration (BENCHMARKS.md "CPU configuration", scripts/cpu_configs.sh,
# one run on this 2-core machine): the study model's pretraining in two 1-thread processes
# at once with --amp bf16 gives x1.40 the images/s of one 2-thread fp32 process (two 1-thread
# fp32 x1.27, --compile x1.09, bf16 alone x1.05). So arms run two at a time, and every stage
# of every part runs on one thread whatever JOBS is, so a rerun on a fresh machine repeats
# the same arithmetic (the same sha256) even when a part has a single arm.
JOBS=${JOBS:-2}                    # independent arms run at once, one thread each
PRETRAIN_AMP=${PRETRAIN_AMP:-bf16}  # pretraining autocast (classifiers and baselines: fp32)

# --- data: the same labelled split for every classifier and baseline
LABELLED=${LABELLED:-5000}         # labelled training images (after the validation carve)
VAL_SPLIT=${VAL_SPLIT:-2000}       # held out of the 60k training split: every choice, never
                                   # seen by pretraining
EVAL_IMAGES=${EVAL_IMAGES:-10000}  # the whole Fashion-MNIST test split
BATCH=${BATCH:-128}                # classifier and linear-probe batch

# --- model: patch 4, width 64, 6 blocks, 4 heads (the v1 study's)
PATCH=${PATCH:-4}
EMB_DIM=${EMB_DIM:-64}
ENCODER_LAYER=${ENCODER_LAYER:-6}
ENCODER_HEAD=${ENCODER_HEAD:-4}

# --- pretraining: the pilot's base arm, and the main arm's choice
BASE_NORM_PIX=${BASE_NORM_PIX:-1}  # the pilot's base: norm_pix_loss on (1) or off (0),
BASE_POS_EMBED=${BASE_POS_EMBED:-sincos}  # official fixed sin-cos position embeddings,
BASE_DECODER_LAYER=${BASE_DECODER_LAYER:-2}  # decoder 2 x 64 (heads: mae_pretrain.py's
BASE_DECODER_DIM=${BASE_DECODER_DIM:-64}     # max(1, dim // 64)), mask 0.75
BASE_MASK=${BASE_MASK:-0.75}
PILOT_DECODER_LAYER=${PILOT_DECODER_LAYER:-4}  # the pilot's bigger decoder, 4 x 128: about
PILOT_DECODER_DIM=${PILOT_DECODER_DIM:-128}    # 3x the base's pretraining time (v1's depth
# and width rows: ~8 min at the cheap budget). Chosen, a head seed at HEAD_EPOCHS=26 (the
# 10x-steps floor) would take ~85 min: its part then splits over sessions (it resumes).
# chosen by the pilot: see results.md's pilot table. PART=pilot (2026-12-01) picked the
# base (the highest tuned-probe validation accuracy), so MAIN_* are the BASE_* values.
MAIN_NORM_PIX=${MAIN_NORM_PIX:-$BASE_NORM_PIX}
MAIN_POS_EMBED=${MAIN_POS_EMBED:-$BASE_POS_EMBED}
MAIN_DECODER_LAYER=${MAIN_DECODER_LAYER:-$BASE_DECODER_LAYER}
MAIN_DECODER_DIM=${MAIN_DECODER_DIM:-$BASE_DECODER_DIM}
MAIN_MASK=${MAIN_MASK:-$BASE_MASK}
PRETRAIN_BATCH=${PRETRAIN_BATCH:-256}
PRETRAIN_LR=${PRETRAIN_LR:-1e-3}   # base lr at batch 256 (the v1 study's; 1.5e-4 is slow here)
PRETRAIN_IMAGES=${PRETRAIN_IMAGES:-15000}  # the cheap budget (pilot, ablations): the v1 main
PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS:-10}     # arm's 15,000 images x 10 epochs = 590 steps,
PRETRAIN_WARMUP=${PRETRAIN_WARMUP:-1}      # 1 warmup epoch
HEAD_IMAGES=${HEAD_IMAGES:-58000}  # the headline arm: every non-validation training image
HEAD_EPOCHS=${HEAD_EPOCHS:-30}     # 30 x 227 = 6,800 steps (>= 10x 590), ~30 min per seed
whole_numbers HEAD_EPOCHS  # checked before the arithmetic on it
HEAD_WARMUP=${HEAD_WARMUP:-$((HEAD_EPOCHS / 10))}  # a tenth of the run
HEAD_KNN_FREQ=${HEAD_KNN_FREQ:-5}  # kNN monitor every N epochs: does it still rise?
# --- read-outs of every headline encoder (MAE and random): the tuned probe and kNN of each
# pool x block (baselines.py --pool / --block; block -1 = the last, with the final norm,
# the default read-out). The report chooses one on validation.
READOUT_POOLS=${READOUT_POOLS:-"cls mean"}
READOUT_BLOCKS=${READOUT_BLOCKS:-"3 4 -1"}  # 0-based: the 6-block encoder's last three
HEAD_DEPTHS=${HEAD_DEPTHS:-"1 8"}  # Table 1's decoder-depth endpoints at the headline budget

# --- classifiers
# scratch and every fine-tune (head, head_depth): one early-stopped run per base lr, the
# report keeping, per seed, the one with the best validation accuracy. V2_LR's runs keep v2's
# names (head_seed<s>, scratch_seed<s>); another lr's: head_lr<lr>_seed<s>, scratch_lr<lr>_...
CLS_LRS=${CLS_LRS:-"5e-4 1e-3 2e-3"}
V2_LR=1e-3                         # the seed recipe's base lr, v2's only one
MAX_EPOCHS=${MAX_EPOCHS:-200}      # scratch and the head's fine-tune: at most, with
PATIENCE=${PATIENCE:-10}           # early stopping after N epochs without a val_acc gain
ABL_CLS_EPOCHS=${ABL_CLS_EPOCHS:-8}  # the ablations' short fine-tune (cosine): the v1 budget
ABL_CLS_WARMUP=${ABL_CLS_WARMUP:-1}
PCA_DIM=${PCA_DIM:-$EMB_DIM}       # pixel baselines at the encoder's width

# --- the ablations (Table 1's endpoints; the default row holds the main arm's values)
ABL_DEPTHS=${ABL_DEPTHS:-"1 8"}    # decoder blocks
whole_numbers EMB_DIM
ABL_WIDTHS=${ABL_WIDTHS:-"$((EMB_DIM / 2)) $((EMB_DIM * 4))"}  # 0.5x and 4x the encoder width
                                   # (decoder heads max(1, dim // 64) divide both)
ABL_MASKS=${ABL_MASKS:-"0.5 0.9"}
# the settings each environment record lists (study_lib.sh: run_part, environment)
ENV_SETTINGS=(SMOKE SEEDS JOBS PRETRAIN_AMP MAIN_NORM_PIX MAIN_POS_EMBED MAIN_DECODER_LAYER
              MAIN_DECODER_DIM MAIN_MASK PRETRAIN_IMAGES PRETRAIN_EPOCHS HEAD_IMAGES HEAD_EPOCHS MAX_EPOCHS
              PATIENCE ABL_CLS_EPOCHS LIN_EPOCHS LABELLED VAL_SPLIT EVAL_IMAGES READOUT_POOLS
              READOUT_BLOCKS HEAD_DEPTHS CLS_LRS OMP_NUM_THREADS)
source commands/study_lib.sh

ENCODER=(--patch_size "$PATCH" --emb_dim "$EMB_DIM" --encoder_layer "$ENCODER_LAYER"
         --encoder_head "$ENCODER_HEAD")
SPLIT=(--max_train_images "$LABELLED" --val_split "$VAL_SPLIT" --max_eval_images "$EVAL_IMAGES"
       --batch_size "$BATCH" ${SIZE[@]+"${SIZE[@]}"})
CHEAP=(--max_train_images "$PRETRAIN_IMAGES" --total_epoch "$PRETRAIN_EPOCHS"
       --warmup_epoch "$PRETRAIN_WARMUP" --visualize_freq "$PRETRAIN_EPOCHS" --knn_freq 0)
HEAD=(--max_train_images "$HEAD_IMAGES" --total_epoch "$HEAD_EPOCHS" --warmup_epoch "$HEAD_WARMUP"
      --visualize_freq "$HEAD_EPOCHS" --knn_freq "$HEAD_KNN_FREQ")
STOP=(--lr_schedule constant --early_stop_patience "$PATIENCE")  # warmup, then constant lr
# scratch and the head's fine-tune: identical flags but --pretrained_model_path
CONVERGE=("${SPLIT[@]}" --total_epoch "$MAX_EPOCHS" --warmup_epoch "$CLS_WARMUP"
          --recipe "$CLS_RECIPE" --augment flip "${STOP[@]}" "${ENCODER[@]}"
          --pos_embed "$MAIN_POS_EMBED")
SHORT_FT=("${SPLIT[@]}" --total_epoch "$ABL_CLS_EPOCHS" --warmup_epoch "$ABL_CLS_WARMUP"
          --recipe "$CLS_RECIPE" --augment flip)
PROBE=(--method linear --total_epoch "$LIN_EPOCHS" --warmup_epoch "$LIN_WARMUP")
KNN=(--method knn)
# ${A[@]+"${A[@]}"}: an array that may be empty, under set -u on bash 3.2 too

# mae EXP SEED FLAGS...: pretraining of the study's encoder with the MAIN_* settings (an arm
# overrides them as locals) on the training split minus the VAL_SPLIT images; FLAGS: budget.
mae() {
    local exp=$1 seed=$2 norm_pix=()
    shift 2
    if (( MAIN_NORM_PIX )); then
        norm_pix=(--norm_pix_loss)
    fi
    pretrain "$exp" ${SIZE[@]+"${SIZE[@]}"} "${ENCODER[@]}" --seed "$seed" \
        --pos_embed "$MAIN_POS_EMBED" --decoder_layer "$MAIN_DECODER_LAYER" \
        --decoder_dim "$MAIN_DECODER_DIM" --mask_ratio "$MAIN_MASK" \
        ${norm_pix[@]+"${norm_pix[@]}"} --val_split "$VAL_SPLIT" \
        --max_eval_images "$EVAL_IMAGES" --knn_train_images "$LABELLED" \
        --knn_eval_images "$VAL_SPLIT" --augment flip --batch_size "$PRETRAIN_BATCH" \
        --max_device_batch_size "$PRETRAIN_BATCH" --base_learning_rate "$PRETRAIN_LR" \
        --amp "$PRETRAIN_AMP" "$@"
}

# baseline EXP FLAGS...: baselines.py (tuned on validation) on the study's labelled split.
baseline() {
    local exp=$1
    shift
    launch baselines.py "${DATA[@]}" --device "$DEVICE" --output_root "$OUTPUT_ROOT" \
        --exp_name "$exp" "${SPLIT[@]}" "$@"
}

# probe_and_knn EXP SEED: the tuned linear probe and kNN of EXP's own encoder.
probe_and_knn() {
    local enc=(--pretrained_model_path "$(mae_model "$1")" --seed "$2")
    baseline "$1" "${PROBE[@]}" "${enc[@]}"
    baseline "$1" "${KNN[@]}" "${enc[@]}"
}

# readouts EXP FEATURE_FLAGS...: the tuned probe and kNN of every READOUT_POOLS x
# READOUT_BLOCKS read-out of one encoder (FEATURE_FLAGS: the MAE's path or --features random).
readouts() {
    local exp=$1 pool block
    shift
    for pool in $READOUT_POOLS; do
        for block in $READOUT_BLOCKS; do
            baseline "$exp" "${PROBE[@]}" "$@" --pool "$pool" --block "$block"
            baseline "$exp" "${KNN[@]}" "$@" --pool "$pool" --block "$block"
        done
    done
}

# lr_exp EXP LR: the experiment of EXP's classifier at base lr LR (EXP itself at V2_LR).
lr_exp() {
    if [[ $2 == "$V2_LR" ]]; then
        echo "$1"
    else
        echo "${1%_seed*}_lr${2}_seed${1##*_seed}"
    fi
}

# converge EXP SEED FLAGS...: scratch's budget and stopping rule at each of CLS_LRS, each in
# lr_exp EXP LR (FLAGS: the encoder, for a fine-tune).
converge() {
    local exp=$1 seed=$2 lr
    shift 2
    for lr in $CLS_LRS; do
        classify "$(lr_exp "$exp" "$lr")" "${CONVERGE[@]}" --base_learning_rate "$lr" \
            --seed "$seed" "$@"
    done
}

# --- arms: the independent chains of stages of a part, JOBS of them at a time
ARMS=()      # the part's queued arms, "FUNCTION EXP SEED SETTINGS..." each
ARM_PIDS=()  # the running arms' processes (JOBS > 1)

# arm FUNCTION EXP SEED SETTINGS...: queue FUNCTION EXP SEED SETTINGS... (its stages run in
# order); EXP's runs, and its classifiers' at every lr (lr_exp), are collected with the
# part's. SETTINGS: NAME=VALUE words, no spaces.
arm() {
    local lr
    ARMS+=("$*")
    PART_EXPS+=("$2")
    for lr in $CLS_LRS; do
        [[ $lr == "$V2_LR" ]] || PART_EXPS+=("$(lr_exp "$2" "$lr")")
    done
}

# run_arms: run the queued arms, each on one thread: in order at JOBS=1; else JOBS at a time,
# each a background shell with its output in OUTPUT_ROOT/logs/EXP.log. Fails (after the others
# end) when one fails; an interrupt stops every arm (rerun to resume them all).
run_arms() {
    local spec pid words failed=()
    if (( JOBS == 1 )); then
        for spec in ${ARMS[@]+"${ARMS[@]}"}; do
            OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $spec  # words: FUNCTION EXP SEED SETTINGS...
        done
        ARMS=()
        return
    fi
    mkdir -p "$OUTPUT_ROOT/logs"
    trap stop_arms INT TERM
    for spec in ${ARMS[@]+"${ARMS[@]}"}; do
        while (( $(jobs -pr | wc -l) >= JOBS )); do
            sleep 1
        done
        read -r -a words <<< "$spec"
        echo "arm ${words[1]}: started, log $OUTPUT_ROOT/logs/${words[1]}.log"
        (OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $spec) >> "$OUTPUT_ROOT/logs/${words[1]}.log" 2>&1 &
        ARM_PIDS+=("$!:${words[1]}")
    done
    for pid in ${ARM_PIDS[@]+"${ARM_PIDS[@]}"}; do
        if wait "${pid%%:*}"; then
            echo "arm ${pid#*:}: finished"
        else
            failed+=("${pid#*:}")
            tail -n 20 "$OUTPUT_ROOT/logs/${pid#*:}.log" >&2
        fi
    done
    trap - INT TERM
    ARMS=() ARM_PIDS=()
    if (( ${#failed[@]} )); then
        echo "error: arms failed: ${failed[*]} (logs in $OUTPUT_ROOT/logs/; rerun to resume)" >&2
        exit 1
    fi
}

# stop_arms: on INT or TERM, end each running arm's shell and the stage it runs, then exit.
stop_arms() {
    local pid stages
    for pid in ${ARM_PIDS[@]+"${ARM_PIDS[@]}"}; do
        stages=$(pgrep -P "${pid%%:*}" || true)
        kill -TERM "${pid%%:*}" $stages 2>/dev/null || true
    done
    wait || true
    exit 143
}

# settings_ok NAME=VALUE...: exit status 2 (with a message) unless each NAME is a MAIN_*
# setting (the arm then makes them local: its stages see them, the rest of the part does not).
settings_ok() {
    local word
    for word in "$@"; do
        case ${word%%=*} in
            MAIN_NORM_PIX | MAIN_POS_EMBED | MAIN_DECODER_LAYER | MAIN_DECODER_DIM | MAIN_MASK) ;;
            *) echo "error: not a MAIN_* setting: $word" >&2; return 2 ;;
        esac
    done
}

# --- the arms of each part
# pilot_arm EXP SEED SETTINGS...: the base's pretraining with SETTINGS changed, at the cheap
# budget, then its tuned probe and kNN (judged on validation only).
pilot_arm() {
    local exp=$1 seed=$2
    shift 2
    settings_ok "$@"
    local MAIN_NORM_PIX=$BASE_NORM_PIX MAIN_POS_EMBED=$BASE_POS_EMBED \
        MAIN_DECODER_LAYER=$BASE_DECODER_LAYER MAIN_DECODER_DIM=$BASE_DECODER_DIM \
        MAIN_MASK=$BASE_MASK
    [[ $# == 0 ]] || local "$@"
    mae "$exp" "$seed" "${CHEAP[@]}"
    probe_and_knn "$exp" "$seed"
}

# head_arm EXP SEED [SETTINGS...]: the main arm (SETTINGS changed) at the headline budget;
# the tuned probe and kNN of each read-out of its encoder and of a random one, and its
# fine-tune (scratch's budget and stopping rule).
head_arm() {
    local exp=$1 seed=$2
    shift 2
    settings_ok "$@"
    [[ $# == 0 ]] || local "$@"
    mae "$exp" "$seed" "${HEAD[@]}"
    readouts "$exp" --pretrained_model_path "$(mae_model "$exp")" --seed "$seed"
    readouts "$exp" --features random "${ENCODER[@]}" --pos_embed "$MAIN_POS_EMBED" \
        --seed "$seed"
    converge "$exp" "$seed" --pretrained_model_path "$(mae_model "$exp")"
}

# scratch_arm EXP SEED: from scratch until validation accuracy stops improving.
scratch_arm() {
    converge "$1" "$2"
}

# pixels_arm EXP SEED: tuned pixel probes, full and at the encoder's width (PCA); the
# deterministic kNNs with PIXEL_KNN_SEED only.
pixels_arm() {
    local exp=$1 seed=$2 pca=(--pca_dim "$PCA_DIM")
    baseline "$exp" --features pixels "${PROBE[@]}" --seed "$seed"
    baseline "$exp" --features pixels "${PROBE[@]}" "${pca[@]}" --seed "$seed"
    if [[ $seed == "$PIXEL_KNN_SEED" ]]; then
        baseline "$exp" --features pixels "${KNN[@]}" --seed "$seed"
        baseline "$exp" --features pixels "${KNN[@]}" "${pca[@]}" --seed "$seed"
    fi
}

# abl_arm EXP SEED SETTINGS...: the main arm at the cheap budget with SETTINGS changed; its
# short fine-tune and tuned probe.
abl_arm() {
    local exp=$1 seed=$2
    shift 2
    settings_ok "$@"
    [[ $# == 0 ]] || local "$@"
    mae "$exp" "$seed" "${CHEAP[@]}"
    local enc=(--pretrained_model_path "$(mae_model "$exp")" --seed "$seed")
    classify "$exp" "${SHORT_FT[@]}" "${enc[@]}"
    baseline "$exp" "${PROBE[@]}" "${enc[@]}"
}

# --- the parts
part_pilot() {
    local variant words
    for variant in "base" "nonormpix MAIN_NORM_PIX=0" "learnedpos MAIN_POS_EMBED=learned" \
        "dec${PILOT_DECODER_LAYER}x$PILOT_DECODER_DIM MAIN_DECODER_LAYER=$PILOT_DECODER_LAYER \
MAIN_DECODER_DIM=$PILOT_DECODER_DIM"; do
        read -r -a words <<< "$variant"
        arm pilot_arm "pilot_${words[0]}_seed$PILOT_SEED" "$PILOT_SEED" \
            ${words[1]+"${words[@]:1}"}
    done
    run_arms
}

part_head() {
    local seed
    for seed in $SEEDS; do
        arm head_arm "head_seed$seed" "$seed"
    done
    run_arms
}

# Table 1's depth endpoints at the headline budget, paired by seed with head_seed<s> (the
# default depth): head_depth<d>_seed<s>.
part_head_depth() {
    local seed depth
    for seed in $SEEDS; do
        for depth in $HEAD_DEPTHS; do
            arm head_arm "head_depth${depth}_seed$seed" "$seed" "MAIN_DECODER_LAYER=$depth"
        done
    done
    run_arms
}

part_scratch() {
    local seed
    for seed in $SEEDS; do
        arm scratch_arm "scratch_seed$seed" "$seed"
    done
    run_arms
}

part_pixels() {
    local seed
    for seed in $SEEDS; do
        arm pixels_arm "pixels_seed$seed" "$seed"
    done
    run_arms
}

# ABL_STAGES: the default row's stages; once in RESULTS/runs/ (an earlier ablation part's),
# a later ablation part does not train that seed's default row again.
ABL_STAGES="mae-pretrain pretrain-cls mae-lin"

# ablation PREFIX SETTING VALUES...: rows PREFIX<value>_seed<s> with SETTING=value, for every
# seed, each after the seed's default row abl_default_seed<s> unless that is committed.
ablation() {
    local prefix=$1 setting=$2 seed value stage committed
    shift 2
    for seed in $SEEDS; do
        committed=1
        for stage in $ABL_STAGES; do
            [[ -f "$RESULTS/runs/abl_default_seed$seed/$stage/summary.json" ]] || committed=0
        done
        (( committed )) || arm abl_arm "abl_default_seed$seed" "$seed"
        for value in "$@"; do
            arm abl_arm "abl_${prefix}${value}_seed$seed" "$seed" "$setting=$value"
        done
    done
    run_arms
}

part_abl_depth() {
    ablation depth MAIN_DECODER_LAYER $ABL_DEPTHS
}

part_abl_width() {
    ablation width MAIN_DECODER_DIM $ABL_WIDTHS
}

part_abl_mask() {
    ablation mask MAIN_MASK $ABL_MASKS
}

part_report() {
    "$PYTHON" report.py --outputs_root "$RESULTS/runs" --out "$RESULTS" \
        --ablation_base abl_default --environment "$RESULTS/environment"
}


PARTS="pilot head scratch pixels abl_depth abl_width abl_mask head_depth"
JOBS_MAX=64  # arms at once; more digits would wrap bash's arithmetic (the driver hung)
# every setting is checked before anything runs: one word of PARTS, whole numbers
known=0
for part in $PARTS report all; do
    [[ $PART == "$part" ]] && known=1
done
(( known )) || setting_error PART "one of $PARTS, report, all or empty"
[[ $SEEDS =~ ^[[:space:]]*[0-9]{1,9}([[:space:]]+[0-9]{1,9})*[[:space:]]*$ ]] ||
    setting_error SEEDS "whole numbers separated by spaces (e.g. \"1 2 3\")"
[[ $JOBS =~ ^[1-9][0-9]?$ ]] && (( JOBS <= JOBS_MAX )) ||
    setting_error JOBS "a whole number from 1 to $JOBS_MAX"
whole_numbers LABELLED VAL_SPLIT EVAL_IMAGES BATCH PATCH ENCODER_LAYER ENCODER_HEAD \
    BASE_DECODER_LAYER BASE_DECODER_DIM PILOT_DECODER_LAYER PILOT_DECODER_DIM \
    MAIN_DECODER_LAYER MAIN_DECODER_DIM PRETRAIN_BATCH PRETRAIN_IMAGES PRETRAIN_EPOCHS \
    PRETRAIN_WARMUP HEAD_IMAGES HEAD_WARMUP HEAD_KNN_FREQ MAX_EPOCHS PATIENCE ABL_CLS_EPOCHS \
    ABL_CLS_WARMUP PCA_DIM LIN_EPOCHS LIN_WARMUP CLS_WARMUP PILOT_SEED PIXEL_KNN_SEED
whole_number_lists ABL_DEPTHS ABL_WIDTHS HEAD_DEPTHS
matching '^-?[0-9]{1,3}( -?[0-9]{1,3})*$' "block numbers separated by spaces (-1: the last)" \
    READOUT_BLOCKS
matching '^(cls|mean)( (cls|mean))*$' "cls and/or mean, separated by spaces" READOUT_POOLS
matching '^[0-9.]+(e-?[0-9]+)?( [0-9.]+(e-?[0-9]+)?)*$' "learning rates separated by spaces" \
    CLS_LRS
for flag in BASE_NORM_PIX MAIN_NORM_PIX; do
    [[ ${!flag} == 0 || ${!flag} == 1 ]] || setting_error "$flag" "1 (on) or 0 (off)"
done
case $PART in
    report) part_report ;;
    all)
        for part in $PARTS; do
            run_part "$part"
        done
        part_report
        ;;
    *) run_part "$PART" ;;
esac
