#!/usr/bin/env bash
# Which CPU configuration trains the study's model fastest? Each
# configuration runs real MAE pretraining (mae_pretrain.py: patch 4, width 64, 6 blocks,
# decoder 2 x 64, batch 256, Fashion-MNIST 28 x 28) for EPOCHS short epochs; its speed is the
# median images/s of the epochs after the first (the first holds compilation and warm-up),
# read from metrics.csv. Rounds repeat every configuration in turn, so background load falls
# on all of them alike; the figure is the median over rounds. Ratios are against
# "1 process x 2 threads, eager, fp32" measured in the same run.
#   one_2t          one process, 2 threads, eager, fp32 (the reference)
#   two_1t          two processes at once, 1 thread each: total images/s of both
#   compile_2t      one process, 2 threads, --compile (inductor)
#   bf16_2t         one process, 2 threads, --amp bf16 (AMX)
#   two_1t_bf16     two processes at once, 1 thread each, --amp bf16
#   bash scripts/cpu_configs.sh                    # writes outputs/cpu_configs/{runs,table.md}
#   ROUNDS=1 EPOCHS=2 IMAGES=512 DATASET=fake bash scripts/cpu_configs.sh   # a smoke run
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-outputs/cpu_configs}
PYTHON=${PYTHON:-python}  # the interpreter that runs every stage
DATASET=${DATASET:-fashion_mnist}
DATA_DIR=${DATA_DIR:-/usr/share/datasets/fashion-mnist}
ROUNDS=${ROUNDS:-2}
EPOCHS=${EPOCHS:-4}        # the first is warm-up; the median of the rest is the speed
IMAGES=${IMAGES:-5120}     # per epoch: 20 optimizer steps of 256
CONFIGS=${CONFIGS:-"one_2t two_1t compile_2t bf16_2t two_1t_bf16"}
MODEL=(--patch_size 4 --emb_dim 64 --encoder_layer 6 --encoder_head 4 --decoder_layer 2
       --decoder_dim 64 --mask_ratio 0.75 --norm_pix_loss --batch_size 256
       --max_device_batch_size 256 --augment flip)
RUN=(--dataset "$DATASET" --data_dir "$DATA_DIR" --device cpu --max_train_images "$IMAGES"
     --max_eval_images 256 --total_epoch "$EPOCHS" --warmup_epoch 1 --visualize_freq 0
     --knn_freq 0 --overwrite)
[[ "$DATASET" == fake ]] && RUN+=(--image_size 28)

# pretrain NAME THREADS FLAGS...: one short pretraining into OUT/runs/NAME.
pretrain() {
    local name=$1 threads=$2
    shift 2
    OMP_NUM_THREADS=$threads "$PYTHON" mae_pretrain.py "${MODEL[@]}" "${RUN[@]}" \
        --output_root "$OUT/runs" --exp_name "$name" "$@" > "$OUT/runs/$name.log" 2>&1
}

# measure CONFIG ROUND: run one configuration once.
measure() {
    local config=$1 round=$2
    case $config in
        one_2t) pretrain "${config}_r$round" 2 ;;
        compile_2t) pretrain "${config}_r$round" 2 --compile ;;
        bf16_2t) pretrain "${config}_r$round" 2 --amp bf16 ;;
        two_1t | two_1t_bf16)
            local amp=()
            [[ $config == two_1t_bf16 ]] && amp=(--amp bf16)
            pretrain "${config}_r${round}_a" 1 --seed 1 ${amp[@]+"${amp[@]}"} &
            pretrain "${config}_r${round}_b" 1 --seed 2 ${amp[@]+"${amp[@]}"} &
            wait
            ;;
        *) echo "error: unknown configuration '$config'" >&2; exit 2 ;;
    esac
}

mkdir -p "$OUT/runs"
for round in $(seq 1 "$ROUNDS"); do
    for config in $CONFIGS; do
        echo "round $round: $config"
        measure "$config" "$round"
    done
done

"$PYTHON" - "$OUT" "$CONFIGS" <<'EOF' | tee "$OUT/table.md"
import glob, statistics, sys
import pandas as pd
out, configs = sys.argv[1], sys.argv[2].split()
REFERENCE = "one_2t"

def speed(folder):
    """Median images/s of a run's epochs after the first."""
    rows = pd.read_csv(f"{folder}/mae-pretrain/metrics.csv")
    return statistics.median(rows["images_per_s"].iloc[1:])

speeds = {}
for config in configs:  # total images/s of a round = the sum over its processes
    rounds = {}
    for folder in glob.glob(f"{out}/runs/{config}_r*/"):
        name = folder.rstrip("/").rsplit("/", 1)[1]
        rnd = name[len(config) + 2:].split("_")[0]
        rounds[rnd] = rounds.get(rnd, 0.0) + speed(folder)
    speeds[config] = statistics.median(rounds.values())
ref = speeds.get(REFERENCE)
print("| configuration | images/s (median over rounds) | vs one_2t |")
print("| --- | --- | --- |")
for config, value in speeds.items():
    ratio = f"x{value / ref:.2f}" if ref else "—"
    print(f"| {config} | {value:,.0f} | {ratio} |")
EOF
