#!/usr/bin/env bash
# The GPU check of docs/distributed.md, prepared as one command for a session that is lent a GPU machine.
# First, here: bash benchmarks/device/fetch_wheels.sh
# Then, through the device tool, in two calls (each fits the 10 minutes of one):
#   run(command="bash benchmarks/device/gpu_check.sh train", carry=[".whl"], timeout_s=540)
#   run(command="bash benchmarks/device/gpu_check.sh inference", carry=[".whl"], timeout_s=300)
# Writes to $OUT: gpu.txt (the card, /dev/shm), gpu_real.md (the table), log.txt (everything printed).
# Measures the paper config (96x192x192, batch 4, 47 heads in 13 datasets, bf16) fed by the real loader with
# 6 and 12 workers, residual and plain U-Net: iterations/s, data-wait fraction, peak GPU memory; then runs
# the test suite's CUDA tests; then MONAI against our streaming export (inference_masks.md). About 5-8 minutes
# after the machine has started.
set -uo pipefail
out=${OUT:-/tmp/gpu_check_out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing the carried wheels failed (run benchmarks/device/fetch_wheels.sh first)"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; df -h /dev/shm; \
  python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))'; } 2>&1 | tee "$out/gpu.txt"
part=${1:-all}  # train | inference | all
if [ "$part" != inference ]; then
timeout 420 python3 benchmarks/train_throughput.py --device cuda --parts paper-real --archs resenc_unet plain_unet \
    --amp bf16 --paper-workers 6 12 --workdir /tmp/tt --out "$out/gpu_real.md" 2>&1 | tee "$out/log.txt"
timeout 90 python3 -m pytest -q -p no:cacheprovider tests -k cuda 2>&1 | tee -a "$out/log.txt"
fi
[ "$part" = train ] && exit 0
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/inference/test_export.py -k cuda 2>&1 | tee -a "$out/log.txt"
# issue 15: MONAI's sliding window against ours on the same network and volume, both ending with one binary
# mask per head on the host (ours: predict's export, thresholding and crops on the GPU), at 2 and 47 heads
timeout 240 python3 benchmarks/inference_benchmark.py --device cuda --masks --heads 2 47 --shape 300 512 512 \
    --repeats 3 --out "$out/inference_masks.md" 2>&1 | tee -a "$out/log.txt"
