#!/usr/bin/env bash
# bench.py on one GPU, the main configurations (about 5-8 minutes on an H100, mostly
# torch.compile); each run prints its table and writes a JSON file to OUT_DIR:
#   vit-t_compile.json         ViT-T/2 MAE (decoder 4 x 192), batch 4096, bf16, compiled: every
#                              phase (data, pretrain, finetune, probe) against the seed path
#   vit-t_eager.json           the same without torch.compile (pretrain, finetune)
#   vit-t_pretrain_micro4096   pretraining in one micro-batch of 4096 (the issue's target:
#                              >= 25,000 images/s on one H100)
# The seed path always runs fp32, eager, in micro-batches of 512 (the seed's own setting).
# Usage: bash scripts/gpu_bench.sh   [env: OUT_DIR, DATASET (fake | cifar10 in DATA_DIR), DEVICE]
set -euo pipefail
cd "$(dirname "$0")/.."

OUT_DIR=${OUT_DIR:-results/bench_gpu}
DATASET=${DATASET:-fake}
DATA_DIR=${DATA_DIR:-./data}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true

COMMON=(--device "$DEVICE" --dataset "$DATASET" --data_dir "$DATA_DIR" --preset vit-t)
python bench.py "${COMMON[@]}" --compile --out "$OUT_DIR/vit-t_compile.json"
python bench.py "${COMMON[@]}" --phases pretrain finetune --out "$OUT_DIR/vit-t_eager.json"
python bench.py "${COMMON[@]}" --compile --phases pretrain --max_device_batch_size 4096 \
    --out "$OUT_DIR/vit-t_pretrain_micro4096.json"
