#!/usr/bin/env bash
# The GPU check, one command of about 7 minutes on one H100/H200 that installs
# nothing (Python 3.12, torch >= 2.11, timm, tqdm, tensorboard, matplotlib, einops, pandas).
# Stages, each under its own timeout so that one hang cannot eat the budget:
#   a. the CUDA tests (tests/test_cuda.py: bf16 autocast, fused AdamW, inductor vs eager,
#      DeviceLoader on the GPU, NCCL + DDP)                   -> cuda_tests.xml (+ the log)
#   b. bench.py at the seed's configuration (ViT-T/2 MAE, decoder 4 x 192, batch 4096): the
#      data and pretrain phases, compiled and eager and the seed-style path interleaved in one
#      run: images/s, TFLOP/s, fraction of the bf16 peak, ratios       -> bench.json
#   c. full-size MAE pretraining of ViT-T/2 on Fashion-MNIST's 60,000 training images at
#      32 x 32 (eager, bf16) for as many epochs as PRETRAIN_SECONDS allow at the eager speed
#      that b measured, with the kNN monitor; then the cached linear probe and a short
#      fine-tune of its encoder                                       -> runs.tar.gz
# Written to OUT_DIR ($OUT if set, else outputs/gpu_check): gpu_check.log (everything
# printed), env.txt, cuda_tests.xml, bench.json, runs.tar.gz (the run folders of c without
# weights; the folders themselves stay in RUNS). Five files: the device tool returns <= 8.
#
# The data: the four Debian .gz files of Fashion-MNIST in the git-ignored DATA_DIR
# (data/fashion-mnist), copied from /usr/share/datasets/fashion-mnist when that exists:
#   mkdir -p data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz data/fashion-mnist/
# The device `run` call (from a checkout with those files; ~31 MB of the 64 MiB that travel):
#   run(command="bash scripts/gpu_check.sh", carry=["data/fashion-mnist"], timeout_s=540)
# A partial rerun: STAGES="b" (or "c", "a c", ...) runs only those stages.
# Dry run on the CPU at tiny size (a few minutes; stage a then skips every CUDA test):
#   GPU_CHECK_TINY=1 DEVICE=cpu OUT_DIR=/tmp/gpu_check bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."

OUT_DIR=${OUT_DIR:-${OUT:-outputs/gpu_check}}
RUNS=${RUNS:-outputs/gpu_check_runs}
DATA_DIR=${DATA_DIR:-data/fashion-mnist}
SYSTEM_DATA=/usr/share/datasets/fashion-mnist
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python}  # the interpreter that runs every stage
STAGES=${STAGES:-"a b c"}
TINY=${GPU_CHECK_TINY:-0}
PRETRAIN_SECONDS=${PRETRAIN_SECONDS:-150}  # training time of c's pretraining (its epochs)
TRAIN_IMAGES=60000                         # Fashion-MNIST's training split
EXP=fmnist_vit-t

if [[ "$TINY" == 1 ]]; then  # the same commands at toy size: catches typos, proves nothing
    export TORCH_COMPILE_DISABLE=1  # inductor's C++ build takes minutes on a small CPU
    PRETRAIN_SECONDS=${GPU_CHECK_TINY_SECONDS:-5}
    TRAIN_IMAGES=1024
    MAX_EPOCHS=2
    BENCH=(--preset tiny --workers 0 --threads 1 --batch_size 64 --max_device_batch_size 32
           --steps 1 --warmup 0)
    MODEL=(--emb_dim 32 --encoder_layer 2 --encoder_head 2 --decoder_layer 1 --decoder_dim 32)
    SIZES=(--image_size 16 --max_train_images "$TRAIN_IMAGES" --max_eval_images 256)
    PRETRAIN=(--batch_size 256 --max_device_batch_size 256 --knn_train_images 512
              --knn_eval_images 256 --eval_images 128)
    LIN_EPOCHS=2 CLS_EPOCHS=1
else
    MAX_EPOCHS=400
    BENCH=(--preset vit-t)  # batch 4096 in micro-batches of 1024; the seed's in 512
    MODEL=()                # mae_pretrain.py's defaults: ViT-T/2, decoder 4 x 192
    SIZES=(--image_size 32)
    PRETRAIN=(--batch_size 4096 --max_device_batch_size 1024)
    LIN_EPOCHS=${LIN_EPOCHS:-30} CLS_EPOCHS=${CLS_EPOCHS:-3}
fi
# time limits (s) of the stages: generous, they only stop a hang
LIMIT_TESTS=180 LIMIT_BENCH=240 LIMIT_PRETRAIN=$((PRETRAIN_SECONDS + 120)) LIMIT_PROBE=90
LIMIT_FINETUNE=150

mkdir -p "$OUT_DIR" "$RUNS"
export PYTHONUNBUFFERED=1
failed=()

# stage NAME SECONDS CMD...: run CMD under a time limit; note a failure and go on.
stage() {
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    timeout --kill-after=15 "$limit" "$@"
    rc=$?
    echo "=== $name: exit $rc after $((SECONDS - t0))s"
    ((rc == 0)) || failed+=("$name")
    return "$rc"
}

wants() { [[ " $STAGES " == *" $1 "* ]]; }

if [[ -z "${GPU_CHECK_LOGGING:-}" ]]; then  # run again with everything printed into the log
    mkdir -p "$OUT_DIR"
    GPU_CHECK_LOGGING=1 bash "$0" "$@" 2>&1 | tee -a "$OUT_DIR/gpu_check.log"
    exit "${PIPESTATUS[0]}"
fi

{
    date -u
    git rev-parse --short HEAD 2>/dev/null || true
    nvidia-smi 2>/dev/null || echo "no nvidia-smi"
    "$PYTHON" -c "import sys, torch, timm; print('python', sys.version.split()[0], '| torch', \
torch.__version__, 'cuda', torch.version.cuda, '| timm', timm.__version__, '| gpu', \
torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
} > "$OUT_DIR/env.txt" 2>&1
cat "$OUT_DIR/env.txt"

# --- a. the CUDA tests
if wants a; then
    # -o addopts: the machine installs nothing, and may lack pytest-xdist (the suite's -n auto)
    stage cuda_tests "$LIMIT_TESTS" "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider \
        -o addopts=-ra --junitxml "$OUT_DIR/cuda_tests.xml" tests/test_cuda.py
fi

# --- b. throughput at the seed's configuration
if wants b; then
    stage bench "$LIMIT_BENCH" "$PYTHON" bench.py "${BENCH[@]}" --device "$DEVICE" --compile \
        --with_eager --phases data pretrain --out "$OUT_DIR/bench.json"
fi

# --- c. pretraining on real images, then probe and fine-tune
if wants c; then
    if [[ ! -e "$DATA_DIR/train-images-idx3-ubyte.gz" && -d "$SYSTEM_DATA" ]]; then
        mkdir -p "$DATA_DIR" && cp "$SYSTEM_DATA"/*.gz "$DATA_DIR"/
    fi
    # epochs = PRETRAIN_SECONDS at the eager pretraining speed b measured (the same model; one
    # channel instead of three), less a fifth for evaluation, kNN and the last partial batch
    read -r EPOCHS WARMUP < <("$PYTHON" - "$OUT_DIR/bench.json" "$PRETRAIN_SECONDS" \
        "$TRAIN_IMAGES" "$MAX_EPOCHS" <<'EOF'
import json, sys
path, seconds, images, most = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
USEFUL = 0.8  # share of the wall time spent in training steps
try:
    res = json.load(open(path))["results"]["pretrain"]
    speed = res.get("eager", res["fast"])["images_per_s"]
except (OSError, KeyError, ValueError):
    speed = None
    print("no eager pretraining speed in", path, "(stage b): 10 epochs", file=sys.stderr)
epochs = 10 if speed is None else int(seconds * speed * USEFUL / images)
epochs = max(1, min(most, epochs))
print(epochs, max(1, epochs // 10))  # warmup: a tenth of the run
EOF
    )
    echo "pretraining for $EPOCHS epochs ($WARMUP of warmup)"
    COMMON=(--dataset fashion_mnist --data_dir "$DATA_DIR" --device "$DEVICE"
            --output_root "$RUNS" --exp_name "$EXP" --overwrite "${SIZES[@]}")
    mae="$RUNS/$EXP/mae-pretrain/vit-t-mae.pt"
    if stage pretrain "$LIMIT_PRETRAIN" "$PYTHON" mae_pretrain.py "${COMMON[@]}" "${MODEL[@]}" \
        "${PRETRAIN[@]}" --total_epoch "$EPOCHS" --warmup_epoch "$WARMUP" --knn_freq 5 \
        --visualize_freq "$EPOCHS"; then
        stage probe "$LIMIT_PROBE" "$PYTHON" train_classifier.py "${COMMON[@]}" \
            --pretrained_model_path "$mae" --linear_probe --recipe paper --batch_size 256 \
            --total_epoch "$LIN_EPOCHS" --warmup_epoch 1
        stage finetune "$LIMIT_FINETUNE" "$PYTHON" train_classifier.py "${COMMON[@]}" \
            --pretrained_model_path "$mae" --batch_size 512 --max_device_batch_size 512 \
            --augment flip --total_epoch "$CLS_EPOCHS" --warmup_epoch 1
    fi
    for f in "$RUNS/$EXP"/*/summary.json; do
        [[ -e "$f" ]] && echo "--- $f" && cat "$f"
    done
    [[ -d "$RUNS/$EXP" ]] && tar -czf "$OUT_DIR/runs.tar.gz" --exclude='*.pt' -C "$RUNS" "$EXP"
fi

echo "=== gpu_check: ${SECONDS}s; failed stages: ${failed[*]:-none}; files in $OUT_DIR"
((${#failed[@]} == 0))
