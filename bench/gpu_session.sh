#!/usr/bin/env bash
# One GPU session: throughput of the roster, CAM fast path vs pytorch-grad-cam, and full-size runs
# (phantom-shortcut / phantom-clean / cohen-nih) with CAMs and probes. Results land in $OUT.
# Run from the repo root on the device machine, with .whl (duckdb, grad-cam, ttach, pydicom wheels)
# and .devdata/cxr (cohen + nih of the data pack) carried. SCALE=small for a CPU dry run.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
fi
export CXR_DATA=$PWD/.devdata/cxr CXR_CACHE=/tmp/cxr-cache
DB=$OUT/gpu.duckdb
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__)" | tee -a "$OUT/gpu.txt"
if [ "${SCALE:-full}" = small ]; then
  TP="--models shallow --batch-size 4 --steps 1 --warmup 1 --image-size 64"; CAMS="--models shallow --n 8 --batch-size 4 --repeats 1"
  RUN="--device cpu --image-size 64 --n-phantom 45 --epochs 1"; LUNG="--epochs 1 --size 64 --device cpu"; REAL="--max-per-class 20"; MODELS=shallow
else
  TP="--models paper --batch-size 128 --steps 10 --warmup 3"; CAMS="--models resnet18,resnet50,densenet201 --n 512 --batch-size 128"
  RUN="--device cuda"; LUNG="--epochs 40 --size 128 --device cuda"; REAL=""; MODELS=shallow,resnet18,resnet50,densenet201
fi
echo "== train throughput"; timeout 130 python3 bench/train_throughput.py $TP --json "$OUT/train_throughput.json" 2>&1 | tee "$OUT/train_throughput.md"
echo "== cam throughput"; timeout 60 python3 bench/cam_throughput.py $CAMS 2>&1 | tee "$OUT/cam_throughput.md"
echo "== lung segmenter"; timeout 45 python3 -m benchmark lungs train --data-root "$CXR_DATA" --out /tmp/lungseg/lung_unet $LUNG --db "$DB" 2>&1 | tail -3 | tee "$OUT/lungs.txt"
for data in phantom-shortcut phantom-clean; do
  echo "== $data"; timeout 60 python3 -m benchmark run --data $data --models resnet18 $RUN --db "$DB" --no-progress \
    --checkpoint-dir /tmp/ckpt 2>&1 | grep -vE "^INFO" | tail -8
done
echo "== cohen-nih"; timeout 90 python3 -m benchmark run --data cohen-nih --models $MODELS $RUN $REAL --db "$DB" --no-progress \
  --segmenter /tmp/lungseg/lung_unet --checkpoint-dir /tmp/ckpt 2>&1 | grep -vE "^INFO" | tail -10
python3 bench/summarize_db.py "$DB" 2>&1 | tee "$OUT/summary.txt"
