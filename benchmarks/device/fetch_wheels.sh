#!/usr/bin/env bash
# Run on the development machine (it reaches PyPI), in the repository root, before a GPU check:
#   bash benchmarks/device/fetch_wheels.sh
# Puts into .whl/ (git-ignored) the packages the lent GPU machines lack (their image has torch, numpy, scipy,
# scikit-image, pandas, tqdm, matplotlib, einops, filelock and pyyaml: /work/.library/device/KINDS.md; it
# cannot reach PyPI), at the versions installed in .venv, for their Python 3.12: SimpleITK, batchgeneratorsv2,
# dynamic-network-architectures, connected-components-3d (predict's post-processing imports it) and MONAI
# (SwinUNETR, for benchmarks/device/reproduce_gpu.sh). About 57 MB,
# mostly SimpleITK; the device tool carries at most 64 MiB with the working tree.
set -euo pipefail
py=${PYTHON:-.venv/bin/python}
version() { "$py" -m pip show "$1" | sed -n 's/^Version: //p'; }
rm -rf .whl
mkdir -p .whl
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "simpleitk==$(version simpleitk)" "batchgeneratorsv2==$(version batchgeneratorsv2)" \
    "monai==$(version monai)" \
    "connected-components-3d==$(version connected-components-3d)"
# published as a source archive only: build its (pure-Python) wheel here
"$py" -m pip wheel -q --no-deps -w .whl "dynamic-network-architectures==$(version dynamic-network-architectures)"
ls -l .whl
