#!/usr/bin/env bash
# The reproduction at the GPU sizes (benchmarks/repro/sizes.py: GPU; ~7 min projected on one H200 with 16 CPU
# cores from the speeds of its first, cut-off run: docs/benchmarks.md), prepared as one command for a session
# that is lent a GPU machine.
# First, here: bash benchmarks/device/fetch_wheels.sh   (SimpleITK, batchgeneratorsv2, dnn-architectures, cc3d, MONAI)
# Then, through the device tool: run(command="bash benchmarks/device/reproduce_gpu.sh", carry=[".whl"], timeout_s=600)
# The output folder stays on the machine ($WORK, default /tmp/reproduce_gpu: checkpoints and predictions are far
# more than the 8 files that come back from $OUT); to $OUT go: results_gpu.md (the report, written to
# docs/results_gpu.md there), results_gpu_boxplot.png, results_gpu_curves.png, log.txt (everything printed),
# gpu.txt (the card), findings.json and results_gpu_evidence.tar (benchmarks/repro/evidence.py: every run's
# log, configuration and scores, results/*.json, as the archives of docs/results_gpu_evidence/; written here also
# for a cut-off run, from what it reached). Keep them here: results_gpu*.{md,png} into docs/, and
# `mkdir -p docs/results_gpu_evidence && tar xf results_gpu_evidence.tar -C docs/results_gpu_evidence`.
# The run is resumable, but the machine is given back 30 s after a call: only the same command issued at once
# continues where a cut-off run stopped; a later call gets a fresh machine and starts again (log.txt and the
# evidence still come back from a cut-off run).
set -uo pipefail
out=${OUT:-/tmp/reproduce_gpu_out}
work=${WORK:-/tmp/reproduce_gpu}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing the carried wheels failed (run benchmarks/device/fetch_wheels.sh first)"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 MPLBACKEND=Agg
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; \
  python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))'; } 2>&1 | tee "$out/gpu.txt"
# 540 s leaves the installation above and the copies below inside the device tool's 600 s per command
timeout 540 python3 benchmarks/reproduce.py --gpu --device cuda --out "$work" 2>&1 | tee "$out/log.txt"
rc=${PIPESTATUS[0]}
cp docs/results_gpu.md docs/results_gpu_boxplot.png docs/results_gpu_curves.png "$out/" 2>/dev/null
cp "$work/results/findings.json" "$out/" 2>/dev/null
# the evidence as one file (8 files at most come back from $OUT)
rm -rf /tmp/evidence && python3 -c 'import sys; sys.path.insert(0, "benchmarks"); from repro.evidence import write_evidence
print(write_evidence(sys.argv[1], sys.argv[2]), "files of evidence kept")' "$work" /tmp/evidence \
    && tar cf "$out/results_gpu_evidence.tar" -C /tmp/evidence .
echo "reproduce exit status: $rc (124: cut off by the 540 s timeout)" | tee -a "$out/log.txt"
exit "$rc"
