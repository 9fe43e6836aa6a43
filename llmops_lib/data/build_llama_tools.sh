#!/usr/bin/env bash
# Compile llama.cpp ONCE, from the pinned llama-cpp-python sdist (requirements.txt; given by the
# caller where there is no checkout), and get from that one build both the Python binding (a
# wheel) and llama.cpp's own tools. Before, pip compiled the binding (178 C/C++ files) and
# this script compiled the same sources again for the tools (198 files); now one build of
# 199 files (~10 CPU-minutes, ~5-6 min on 2 cores) serves both.
#
# How: the binding's own build (pip wheel -> scikit-build-core -> CMake) with the tools
# switched on and a build directory kept until the wheel is made; the tools and the shared
# libraries they link (libllama, libggml*, ...) are copied out of it. The other way, one
# CMake build of vendor/llama.cpp that the binding loads through LLAMA_CPP_LIB_PATH,
# compiles the very same 199 files, and then needs that variable in every shell or a
# hand-patched site-packages; so it gains nothing.
#
# Cached OUTSIDE the work tree, keyed by the pinned version AND the backend (cpu|cuda), so a
# CUDA machine never gets a CPU build or the reverse:
#   ${LLMOPS_CACHE:-~/.cache/llmops}/llama-tools/<version>-<backend>/
#       wheel/llama_cpp_python-<version>-*.whl   what setup_env.sh installs into .venv
#       bin/llama-server ... + lib*.so           the tools, RPATH $ORIGIN (they move freely)
#       tools.json                               {"llama_cpp_python", "backend", "tools"}
# Idempotent (a no-op when cached) and safe to run twice at once (flock).
#   llmops_lib/data/build_llama_tools.sh                build if needed
#   llmops_lib/data/build_llama_tools.sh --print-wheel  print the cached wheel's path (fails if none)
#   llmops_lib/data/build_llama_tools.sh --print-config print version, backend, cache and CMake
#                                                       options, build nothing
# It ships inside the package, so the same recipe runs in a checkout (`make setup`) and where
# the course is only pip-installed (Colab: llmops_lib/colab.py runs it). The environment:
#   LLAMA_CPP_VERSION          the llama-cpp-python version, only where there is no checkout (a
#                              checkout's requirements.txt pin always wins, a different value
#                              here is an error)
#   PYTHON                     the Python whose pip builds the wheel (default: the checkout's
#                              .venv/bin/python, else python3)
#   LLMOPS_LLAMA_BACKEND       cpu|cuda instead of detecting it (Colab knows its runtime)
#   LLMOPS_CUDA_ARCHITECTURES  e.g. "75;80;89": compile CUDA for these GPUs only (much shorter)
#   LLMOPS_CACHE               the cache's root (default ~/.cache/llmops)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

# What the course runs: llama-server (nb 03, 10), llama-bench (nb 07), llama-perplexity and
# llama-quantize (nb 09); llama-imatrix (importance matrix for low-bit quants) is one more
# source file on top of the same libraries, so it comes almost free. Not built: llama-cli,
# tts, gguf-split, tokenize, the mtmd CLIs and the other tools. The multimodal library
# (libmtmd) IS compiled, because llama-server links it in this llama.cpp version.
TOOLS=(llama-server llama-bench llama-perplexity llama-quantize llama-imatrix)

# One source of truth: in a checkout, the llama-cpp-python pin in requirements.txt (extras
# allowed); installed without one (Colab), the version the caller passes.
if [ -f "$REPO/requirements.txt" ] && [ -f "$REPO/pyproject.toml" ]; then
    cd "$REPO"
    VERSION="$(sed -n -E 's/^llama-cpp-python(\[[^]]*\])?==([^ ;#]+).*/\2/p' requirements.txt)"
    [ -n "$VERSION" ] || { echo "build_llama_tools: no 'llama-cpp-python==X' pin in $REPO/requirements.txt" >&2; exit 1; }
    if [ -n "${LLAMA_CPP_VERSION:-}" ] && [ "$LLAMA_CPP_VERSION" != "$VERSION" ]; then
        echo "build_llama_tools: LLAMA_CPP_VERSION=$LLAMA_CPP_VERSION, but requirements.txt pins $VERSION" >&2
        exit 1
    fi
else
    VERSION="${LLAMA_CPP_VERSION:-}"
    [ -n "$VERSION" ] || { echo "build_llama_tools: no checkout (no requirements.txt in $REPO): set LLAMA_CPP_VERSION" >&2; exit 1; }
fi
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3

# The CUDA backend only with a visible GPU and the CUDA compiler; CPU otherwise (or as told).
BACKEND="${LLMOPS_LLAMA_BACKEND:-}"
if [ -z "$BACKEND" ]; then
    BACKEND=cpu
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 \
        && command -v nvcc >/dev/null 2>&1; then
        BACKEND=cuda
    fi
fi
case "$BACKEND" in cpu | cuda) ;; *) echo "build_llama_tools: LLMOPS_LLAMA_BACKEND=$BACKEND (cpu or cuda)" >&2; exit 1 ;; esac

ROOT="${LLMOPS_CACHE:-$HOME/.cache/llmops}/llama-tools/$VERSION-$BACKEND"
MANIFEST="$ROOT/tools.json"
wheel_path() { compgen -G "$ROOT/wheel/llama_cpp_python-$VERSION-*.whl" | head -n 1; }
built() {
    [ -f "$MANIFEST" ] && [ -n "$(wheel_path)" ] || return 1
    for tool in "${TOOLS[@]}"; do [ -x "$ROOT/bin/$tool" ] || return 1; done
}

# CMake options, on top of what llama-cpp-python's CMakeLists.txt sets (shared libraries,
# llama-common, no curl). CMAKE_ARGS from the caller's shell is NOT inherited: an option the
# cache key does not know about must not slip into a cached build.
FLAGS=(
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON
    # The binding's LLAVA_BUILD adds tools/mtmd a second time once the tools are on (CMake
    # error), so it is off: the tools build libmtmd; the binding's llama_cpp/lib has no copy,
    # which only matters for llava/mtmd chat handlers, unused here.
    -DLLAVA_BUILD=OFF
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF
    # No network at build or run time: no HTTPS in the tools and no web UI (its assets
    # would be fetched from the Hugging Face Hub during the build).
    -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF
    # The tools find the shared libraries beside them wherever bin/ is copied.
    -DCMAKE_BUILD_RPATH_USE_ORIGIN=ON
)
if [ "$BACKEND" = cuda ]; then
    FLAGS+=(-DGGML_CUDA=on)
    # Only the GPUs the caller names (Colab: its T4, A100 and L4), else CMake's default list.
    # Not part of the cache key: a narrower build still serves the machine that asked for it.
    [ -z "${LLMOPS_CUDA_ARCHITECTURES:-}" ] \
        || FLAGS+=("-DCMAKE_CUDA_ARCHITECTURES=$LLMOPS_CUDA_ARCHITECTURES")
fi
export CMAKE_ARGS="${FLAGS[*]}"

case "${1:-}" in
--print-config)
    printf 'version=%s\nbackend=%s\npython=%s\nroot=%s\ncmake_args=%s\n' \
        "$VERSION" "$BACKEND" "$PYTHON" "$ROOT" "$CMAKE_ARGS"
    exit 0
    ;;
--print-wheel)
    built || { echo "build_llama_tools: nothing built in $ROOT" >&2; exit 1; }
    wheel_path
    exit 0
    ;;
"") ;;
*)
    echo "build_llama_tools: unknown option $1 (--print-wheel, --print-config)" >&2
    exit 2
    ;;
esac

mkdir -p "$ROOT"
# Two concurrent callers (make test in two shells) must not build over each other.
exec 9>"$ROOT/.lock"
flock 9

if built; then
    echo "llama.cpp $VERSION ($BACKEND): binding wheel and tools up to date in $ROOT"
    exit 0
fi

# Under the lock, any work folder left is from an interrupted build: remove it; and no
# manifest while bin/ is being replaced.
rm -rf "$ROOT"/work.* "$MANIFEST"
WORK="$(mktemp -d "$ROOT/work.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
trap 'exit 143' INT TERM HUP
LOG="$ROOT/build.log"

# Build only the tools: their link dependencies are exactly what the binding installs
# (llama, ggml*, llama-common, mtmd), so nothing else is compiled. The wheel leaves out
# bin/ (llama-server would otherwise land in site-packages/bin).
TARGETS="$(IFS=';'; echo "${TOOLS[*]}")"
case "$BACKEND" in cpu) ETA="about 6 min on 2 cores" ;; *) ETA="longer for CUDA: 20-30 min on Colab, an estimate" ;; esac
echo "Building llama.cpp once for llama-cpp-python $VERSION ($BACKEND, $(nproc) cores, $ETA):"
echo "  the Python binding + ${TOOLS[*]}; full log: $LOG"
START=$SECONDS
# --no-binary: the sdist even if some index offers a wheel; --no-cache-dir: pip keeps no
# copy of its own (its wheel cache is keyed by version only, not by backend).
status=0
"$PYTHON" -m pip wheel -v --no-deps --no-cache-dir --no-binary llama-cpp-python \
    --wheel-dir "$WORK/dist" \
    -C build-dir="$WORK/build" -C build.targets="$TARGETS" -C cmake.verbose=false \
    -C wheel.exclude="bin/**" \
    "llama-cpp-python==$VERSION" 2>&1 | tee "$LOG" | {
    # Progress from ninja's "[done/total]" lines: one line per 10 %.
    next=10
    while IFS= read -r line; do
        [[ "$line" =~ \[([0-9]+)/([0-9]+)\] ]] || continue
        pct=$((BASH_REMATCH[1] * 100 / BASH_REMATCH[2]))
        if [ "$pct" -ge "$next" ]; then
            t=$((SECONDS - START))
            printf '  llama.cpp build %3d%%  (%s/%s steps, %dm%02ds)\n' \
                "$pct" "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" $((t / 60)) $((t % 60))
            next=$((pct / 10 * 10 + 10))
        fi
    done
} || status=$?
if [ "$status" -ne 0 ]; then
    tail -n 40 "$LOG" >&2
    echo "build_llama_tools: the build failed (exit $status); full log: $LOG" >&2
    exit 1
fi

# Tools + every shared library of the build (symlinks kept), then a smoke test with no
# environment help; the manifest comes last, so a half-finished build never looks finished.
rm -rf "$ROOT/bin" "$ROOT/wheel" && mkdir -p "$ROOT/bin" "$ROOT/wheel"
for tool in "${TOOLS[@]}"; do install -m 755 "$WORK/build/bin/$tool" "$ROOT/bin/$tool"; done
cp -P "$WORK"/build/bin/lib*.so* "$ROOT/bin/"
env -u LD_LIBRARY_PATH "$ROOT/bin/llama-server" --version >/dev/null 2>&1 \
    || { echo "build_llama_tools: llama-server does not start from $ROOT/bin" >&2; exit 1; }
mv "$WORK"/dist/llama_cpp_python-*.whl "$ROOT/wheel/"
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
t=$((SECONDS - START))
echo "llama.cpp $VERSION ($BACKEND) built in $((t / 60))m$((t % 60))s: wheel and tools in $ROOT"
