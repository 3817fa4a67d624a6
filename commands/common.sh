# Settings and helpers shared by every driver in commands/; sourced, not run.
# Every setting can be overridden from the environment, e.g.
#   DATASET=cifar100 NPROC=4 bash commands/mae_pretrain.sh --amp bf16
# Each driver passes its extra arguments ("$@") last, so they override the flags below.
# Skipping finished runs and resuming unfinished ones is done by the Python scripts, not here.
# Paths are relative to the repository root, where every driver cds first.

# --- data, device, output
DATASET=${DATASET:-cifar10}       # cifar10 | cifar100 | fashion_mnist | folder | fake
DATA_DIR=${DATA_DIR:-./data}      # downloads land here on first use
DEVICE=${DEVICE:-auto}            # auto | cpu | cuda | cuda:N
OUTPUT_ROOT=${OUTPUT_ROOT:-outputs}

# --- launcher: plain python, or torchrun with NPROC processes per node on NNODES nodes
PYTHON=${PYTHON:-python}          # the interpreter of every stage (a venv's or conda's python)
NPROC=${NPROC:-}                  # empty: one process without torchrun
NNODES=${NNODES:-1}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}  # rendezvous host when NNODES > 1
MASTER_PORT=${MASTER_PORT:-29500}

# --- experiments: the seed's folder names
MAIN_EXP=${MAIN_EXP:-main_exp}                 # 600 pretraining / 100 classifier epochs
SHORT_EXP=${SHORT_EXP:-main_exp_150_50}        # 150 / 50; also the ablations' default row
DEPTHS=${DEPTHS:-"1 2 6 8"}                    # decoder blocks; 4 is SHORT_EXP
WIDTHS=${WIDTHS:-"64 128 256 512"}             # decoder width; 192 is SHORT_EXP
MASK_RATIOS=${MASK_RATIOS:-"0.5 0.6 0.85 0.9"} # 0.75 is SHORT_EXP

# --- budgets. Scratch and MAE-initialised classifiers of one comparison use the same arrays,
# so they share recipe, epochs and warmup; the two linear probes likewise.
MAIN_PRETRAIN_EPOCHS=${MAIN_PRETRAIN_EPOCHS:-600}
MAIN_PRETRAIN_WARMUP=${MAIN_PRETRAIN_WARMUP:-40}     # the paper's 40
SHORT_PRETRAIN_EPOCHS=${SHORT_PRETRAIN_EPOCHS:-150}
SHORT_PRETRAIN_WARMUP=${SHORT_PRETRAIN_WARMUP:-10}   # the same 1/15 of the run
MAIN_CLS_EPOCHS=${MAIN_CLS_EPOCHS:-100}
SHORT_CLS_EPOCHS=${SHORT_CLS_EPOCHS:-50}
CLS_WARMUP=${CLS_WARMUP:-5}
CLS_RECIPE=${CLS_RECIPE:-seed}                       # seed | paper (see train_classifier.py -h)
LIN_EPOCHS=${LIN_EPOCHS:-90}                         # the paper's linear probe: 90 epochs,
LIN_WARMUP=${LIN_WARMUP:-10}                         # 10 of them warmup
LIN_RECIPE=${LIN_RECIPE:-fast}                       # cached features, AdamW base lr 0.1: at
                                                     # the seed's 1e-3 the head under-trains

MAIN_PRETRAIN=(--total_epoch "$MAIN_PRETRAIN_EPOCHS" --warmup_epoch "$MAIN_PRETRAIN_WARMUP")
SHORT_PRETRAIN=(--total_epoch "$SHORT_PRETRAIN_EPOCHS" --warmup_epoch "$SHORT_PRETRAIN_WARMUP")
MAIN_CLS=(--total_epoch "$MAIN_CLS_EPOCHS" --warmup_epoch "$CLS_WARMUP" --recipe "$CLS_RECIPE")
SHORT_CLS=(--total_epoch "$SHORT_CLS_EPOCHS" --warmup_epoch "$CLS_WARMUP" --recipe "$CLS_RECIPE")
LIN=(--linear_probe --total_epoch "$LIN_EPOCHS" --warmup_epoch "$LIN_WARMUP"
     --recipe "$LIN_RECIPE")

# One ablation per name: the mae_pretrain.py flag it varies, the prefix of its values in the
# experiment names (ablation_depth_d1, ablation_width_w64, ablation_mask_r0.5) and its values.
# (Functions with case, not associative arrays: the drivers run on macOS's bash 3.2.)
# ablation_setting NAME flag|prefix|values: one of the three for ablation NAME.
ablation_setting() {
    case "$1:$2" in
        depth:flag) echo --decoder_layer ;;
        depth:prefix) echo d ;;
        depth:values) echo "$DEPTHS" ;;
        width:flag) echo --decoder_dim ;;
        width:prefix) echo w ;;
        width:values) echo "$WIDTHS" ;;
        mask:flag) echo --mask_ratio ;;
        mask:prefix) echo r ;;
        mask:values) echo "$MASK_RATIOS" ;;
        *) echo "unknown ablation setting $1 $2" >&2; return 1 ;;
    esac
}

DATA=(--dataset "$DATASET" --data_dir "$DATA_DIR")

# launch SCRIPT ARGS...: run one training script, under torchrun when NPROC is set.
launch() {
    local script=$1
    shift
    if [[ -z "$NPROC" ]]; then
        "$PYTHON" "$script" "$@"
    elif ((NNODES > 1)); then
        torchrun --nproc_per_node="$NPROC" --nnodes="$NNODES" --rdzv_backend=c10d \
            --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" "$script" "$@"
    else
        torchrun --standalone --nproc_per_node="$NPROC" "$script" "$@"
    fi
}

# pretrain EXP FLAGS...: MAE pretraining into OUTPUT_ROOT/EXP/mae-pretrain/.
pretrain() {
    local exp=$1
    shift
    launch mae_pretrain.py "${DATA[@]}" --device "$DEVICE" --output_root "$OUTPUT_ROOT" \
        --exp_name "$exp" "$@"
}

# classify EXP FLAGS...: a classifier into OUTPUT_ROOT/EXP/<stage>/, the stage chosen by
# train_classifier.py from --pretrained_model_path and --linear_probe.
classify() {
    local exp=$1
    shift
    launch train_classifier.py "${DATA[@]}" --device "$DEVICE" --output_root "$OUTPUT_ROOT" \
        --exp_name "$exp" "$@"
}

# mae_model EXP: the path of EXP's pretrained MAE.
mae_model() {
    echo "$OUTPUT_ROOT/$1/mae-pretrain/vit-t-mae.pt"
}

# finetune EXP FLAGS... / probe EXP FLAGS...: fine-tune / linear-probe EXP's own MAE encoder.
finetune() {
    classify "$1" --pretrained_model_path "$(mae_model "$1")" "${@:2}"
}
probe() {
    classify "$1" --pretrained_model_path "$(mae_model "$1")" "${LIN[@]}" "${@:2}"
}

# ablation_exp NAME VALUE: the experiment of one non-default value, e.g. ablation_depth_d1.
ablation_exp() {
    echo "ablation_${1}_$(ablation_setting "$1" prefix)$2"
}

# ablation_exps NAME: the experiments of one ablation, its default (SHORT_EXP) first.
ablation_exps() {
    local value
    echo "$SHORT_EXP"
    for value in $(ablation_setting "$1" values); do
        ablation_exp "$1" "$value"
    done
}

# for_ablation NAME FUNCTION FLAGS...: FUNCTION EXP FLAGS... for every experiment of one
# ablation, e.g. for_ablation depth probe.
for_ablation() {
    local name=$1 fn=$2 exp
    shift 2
    for exp in $(ablation_exps "$name"); do
        "$fn" "$exp" "$@"
    done
}

# pretrain_ablation NAME FLAGS...: pretrain every non-default value of one ablation at the
# SHORT_EXP budget (the default value is SHORT_EXP's own run, not trained twice).
pretrain_ablation() {
    local name=$1 value
    shift
    for value in $(ablation_setting "$name" values); do
        pretrain "$(ablation_exp "$name" "$value")" "${SHORT_PRETRAIN[@]}" \
            "$(ablation_setting "$name" flag)" "$value" "$@"
    done
}

# visualize EXP FLAGS...: prediction figures of EXP's fine-tuned vs scratch classifier and
# its MAE's reconstructions, into OUTPUT_ROOT/EXP/visualize/.
visualize() {
    local dir=$OUTPUT_ROOT/$1
    "$PYTHON" visualize_pred.py "${DATA[@]}" --device "$DEVICE" \
        --finetuned_model_path "$dir/pretrain-cls/vit-t-clf-from_pretrained.pt" \
        --scratch_model_path "$dir/scratch-cls/vit-t-clf-from_scratch.pt" \
        --pretrained_model_path "$(mae_model "$1")" --save_dir "$dir/visualize" "${@:2}"
}

# report DIR: results.md, results.csv and figures of every run under OUTPUT_ROOT, into DIR.
report() {
    "$PYTHON" report.py --outputs_root "$OUTPUT_ROOT" --out "$1"
}
