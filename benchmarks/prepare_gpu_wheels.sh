#!/usr/bin/env bash
# Download, here (where PyPI is reachable), the pure-Python wheels that the GPU selection of benchmarks/gpu_check.sh
# needs and that the GPU machine's image lacks; the GPU machine downloads nothing. The image (Python 3.12, torch
# 2.11 with CUDA 13, Triton 3.6) already has numpy, scipy, pytest, pytest-xdist, pytest-benchmark, tqdm, Pillow,
# safetensors, huggingface-hub, regex, requests, filelock, zipp; it lacks diffusers and importlib_metadata.
#
#   bash benchmarks/prepare_gpu_wheels.sh [DIR]        # default DIR: .whl (git-ignored; carried to the GPU machine)
#
# Pinned versions: diffusers as in pyproject.toml's dev extra; an importlib_metadata that needs only zipp.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.whl}
PY=${PYTHON:-python3}
WHEELS=(diffusers==0.42.1 importlib_metadata==8.7.0)
mkdir -p "$DIR"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DIR" "${WHEELS[@]}" 2> >(grep -v "^WARNING: Location" >&2)
count=$(ls "$DIR"/*.whl | wc -l)
[ "$count" -eq "${#WHEELS[@]}" ] || { echo "prepare_gpu_wheels: expected ${#WHEELS[@]} wheels in $DIR, found $count" >&2; exit 1; }
echo "prepare_gpu_wheels: $count wheels in $DIR ($(du -sh "$DIR" | cut -f1))"
