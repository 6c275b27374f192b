#!/usr/bin/env bash
# The GPU check of docs/distributed.md, prepared as one command for a session that is lent a GPU machine.
# First, here: bash benchmarks/device/fetch_wheels.sh
# Then, through the device tool: run(command="bash benchmarks/device/gpu_check.sh", carry=[".whl"], timeout_s=540)
# Writes to $OUT: gpu.txt (the card, /dev/shm), gpu_real.md (the table), log.txt (everything printed).
# Measures the paper config (96x192x192, batch 4, 47 heads in 13 datasets, bf16) fed by the real loader with
# 6 and 12 workers, residual and plain U-Net: iterations/s, data-wait fraction, peak GPU memory; then runs
# the test suite's CUDA tests. About 3-5 minutes after the machine has started.
set -uo pipefail
out=${OUT:-/tmp/gpu_check_out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing the carried wheels failed (run benchmarks/device/fetch_wheels.sh first)"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; df -h /dev/shm; \
  python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))'; } 2>&1 | tee "$out/gpu.txt"
timeout 420 python3 benchmarks/train_throughput.py --device cuda --parts paper-real --archs resenc_unet plain_unet \
    --amp bf16 --paper-workers 6 12 --workdir /tmp/tt --out "$out/gpu_real.md" 2>&1 | tee "$out/log.txt"
timeout 90 python3 -m pytest -q -p no:cacheprovider tests -k cuda 2>&1 | tee -a "$out/log.txt"
