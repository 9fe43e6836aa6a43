#!/usr/bin/env bash
# The course's llama.cpp release asset for one backend: the portable build of the course's
# one build script (llmops_lib/data/build_llama_tools.sh), packed the way colab.py restores it.
#
#   scripts/build_release_assets.sh cpu|cuda OUTDIR
#
# writes OUTDIR/<name>.tar and OUTDIR/<name>.tar.sha256 (sha256sum's format), where <name> is
# `python -m llmops_lib.planning.colab --asset-name cpu|cuda`: llama-cpp-<version>-<cpu|cuda<major>>-x86-64-v3.
# The release workflow (.github/workflows/llama-release.yml) runs it on a tag; the Colab replica
# runs it and serves OUTDIR on 127.0.0.1 as LLMOPS_LLAMA_RELEASE_URL.
#   cpu   the x86-64-v3 baseline: AVX2, FMA, F16C, BMI2, no AVX-512 (some Colab CPUs lack it);
#         checked below: no AVX-512 instruction in the build's own code.
#   cuda  the same CPU code, and GPU code for LLMOPS_CUDA_ARCHITECTURES (default
#         colab.RELEASE_CUDA_ARCHITECTURES: T4, A100, L4, H100, and PTX for newer GPUs), with
#         the CUDA toolkit on PATH (nvcc; its major version goes into the name).
# The build is cached like any other (LLMOPS_CACHE, default ~/.cache/llmops): a second run
# packs it again without compiling. PYTHON: the interpreter with llmops_lib importable
# (default .venv/bin/python, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."

BACKEND="${1:-}"
OUT="${2:-}"
if [[ ! "$BACKEND" =~ ^(cpu|cuda)$ ]] || [ -z "$OUT" ]; then
    echo "usage: scripts/build_release_assets.sh cpu|cuda OUTDIR" >&2
    exit 2
fi
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
export PYTHON LLMOPS_LLAMA_BACKEND="$BACKEND" LLMOPS_CPU_BASELINE=x86-64-v3
if [ "$BACKEND" = cuda ]; then
    : "${LLMOPS_CUDA_ARCHITECTURES:=$("$PYTHON" -c 'from llmops_lib.planning import colab; print(colab.RELEASE_CUDA_ARCHITECTURES)')}"
    export LLMOPS_CUDA_ARCHITECTURES
else
    unset LLMOPS_CUDA_ARCHITECTURES
fi

START=$SECONDS
llmops_lib/data/build_llama_tools.sh
ROOT="$(llmops_lib/data/build_llama_tools.sh --print-config | sed -n 's/^root=//p')"

# An AVX-512 instruction (a zmm register) anywhere in the build's own code would kill it with
# SIGILL on a Colab CPU without AVX-512.
for file in "$ROOT"/bin/lib*.so "$ROOT"/bin/llama-*; do
    if objdump -d --no-show-raw-insn "$file" | grep -q '%zmm'; then
        echo "build_release_assets: $file holds AVX-512 code: not the x86-64-v3 baseline" >&2
        exit 1
    fi
done
echo "  checked: no AVX-512 instruction in $ROOT/bin"

mkdir -p "$OUT"
ARCHIVE="$("$PYTHON" -m llmops_lib.planning.colab --pack "$BACKEND" "$OUT")"
(cd "$OUT" && sha256sum -c "$(basename "$ARCHIVE").sha256" >/dev/null)
echo "release asset in $((SECONDS - START)) s: $ARCHIVE ($(du -m "$ARCHIVE" | cut -f1) MB)," \
    "sha256 $(cut -d' ' -f1 "$ARCHIVE.sha256")"
