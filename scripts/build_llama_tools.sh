#!/usr/bin/env bash
# Build llama.cpp's own tools (llama-server, llama-bench, llama-perplexity, llama-quantize)
# from the llama-cpp-python source distribution pinned in requirements.txt, so the native
# engine the course measures is exactly the one inside the Python binding.
#
# Idempotent and cached OUTSIDE the work tree, keyed by the pinned version:
#   ${LLMOPS_CACHE:-~/.cache/llmops}/llama-tools/<version>/bin/...   the four tools
#   ${LLMOPS_CACHE:-~/.cache/llmops}/llama-tools/<version>/tools.json where they are
# (llmops_lib.native reads tools.json). Network: only `pip download` from the package
# registry; curl support is off, so the tools never download anything themselves.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=(llama-server llama-bench llama-perplexity llama-quantize)
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3

# One source of truth: the llama-cpp-python pin in requirements.txt (extras allowed).
VERSION="$(sed -n -E 's/^llama-cpp-python(\[[^]]*\])?==([^ ;#]+).*/\2/p' requirements.txt)"
if [ -z "$VERSION" ]; then
    echo "build_llama_tools: no 'llama-cpp-python==X' pin found in requirements.txt" >&2
    exit 1
fi

ROOT="${LLMOPS_CACHE:-$HOME/.cache/llmops}/llama-tools/$VERSION"
MANIFEST="$ROOT/tools.json"
mkdir -p "$ROOT"

built() {
    [ -f "$MANIFEST" ] || return 1
    for tool in "${TOOLS[@]}"; do [ -x "$ROOT/bin/$tool" ] || return 1; done
}

# Two concurrent callers (make test in two shells) must not build over each other.
exec 9>"$ROOT/.lock"
flock 9

if built; then
    echo "llama.cpp tools for llama-cpp-python $VERSION: up to date in $ROOT/bin"
    exit 0
fi

WORK="$(mktemp -d "$ROOT/work.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

echo "Downloading the llama-cpp-python $VERSION source distribution ..."
# --no-binary for this one package only: pip still prepares its metadata, and `:all:` would
# also compile every build dependency (scikit-build-core, hatchling, ...) from source.
"$PYTHON" -m pip download --quiet --no-deps --no-binary llama-cpp-python \
    --dest "$WORK" "llama-cpp-python==$VERSION"
mkdir "$WORK/src"
tar -xzf "$WORK"/*.tar.gz -C "$WORK/src"
SRC="$(echo "$WORK"/src/*/vendor/llama.cpp)"
[ -f "$SRC/CMakeLists.txt" ] || { echo "build_llama_tools: no vendor/llama.cpp in the sdist" >&2; exit 1; }

# No network at build or run time: no curl/HTTPS (so no model downloads from the tools) and
# no web UI (its assets would be fetched from the Hugging Face Hub during the build).
CMAKE_FLAGS=(-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON
    -DLLAMA_BUILD_SERVER=ON)
BACKEND=cpu
# Same rule as setup_env.sh: the CUDA backend only with a visible GPU and the CUDA compiler.
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 \
    && command -v nvcc >/dev/null 2>&1; then
    CMAKE_FLAGS+=(-DGGML_CUDA=on)
    BACKEND=cuda
fi
command -v ninja >/dev/null 2>&1 && CMAKE_FLAGS+=(-G Ninja)

echo "Building ${TOOLS[*]} ($BACKEND) with $(nproc) jobs; about 7 min on 2 cores ..."
cmake -S "$SRC" -B "$WORK/build" "${CMAKE_FLAGS[@]}" >"$WORK/cmake.log" 2>&1 \
    || { cat "$WORK/cmake.log" >&2; exit 1; }
cmake --build "$WORK/build" --target "${TOOLS[@]}" -j"$(nproc)"

# Install the binaries (static against llama/ggml, so they can move), manifest last:
# a half-finished build never looks finished.
rm -rf "$ROOT/bin" && mkdir -p "$ROOT/bin"
for tool in "${TOOLS[@]}"; do install -m 755 "$WORK/build/bin/$tool" "$ROOT/bin/$tool"; done
"$PYTHON" - "$ROOT" "$VERSION" "$BACKEND" "${TOOLS[@]}" <<'EOF'
import json, os, sys
root, version, backend, tools = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
info = {"llama_cpp_python": version, "backend": backend,
        "tools": {t: os.path.join(root, "bin", t) for t in tools}}
tmp = os.path.join(root, "tools.json.tmp")
with open(tmp, "w") as f:
    json.dump(info, f, indent=2)
os.replace(tmp, os.path.join(root, "tools.json"))
EOF
echo "llama.cpp tools for llama-cpp-python $VERSION ($BACKEND) in $ROOT/bin"
