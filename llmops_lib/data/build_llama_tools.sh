#!/usr/bin/env bash
# Compile llama.cpp ONCE, from the pinned llama-cpp-python sdist (requirements.txt; given by the
# caller where there is no checkout), and get from that one build both the Python binding (a
# wheel) and llama.cpp's own tools. Before, pip compiled the binding (178 C/C++ files) and
# this script compiled the same sources again for the tools (198 files); now one build of
# 199 files serves both.
#
# How: the binding's own build (pip wheel -> scikit-build-core -> CMake) with the tools
# switched on and a build directory kept until the wheel is made; the tools and the shared
# libraries they link (libllama, libggml*, ...) are copied out of it. The other way, one
# CMake build of vendor/llama.cpp that the binding loads through LLAMA_CPP_LIB_PATH,
# compiles the very same 199 files, and then needs that variable in every shell or a
# hand-patched site-packages; so it gains nothing.
#
# CPU code, two baselines (LLMOPS_CPU_BASELINE):
#   x86-64-v3  (default on x86_64: `make setup`, release assets, Colab, the replica)
#              GGML_NATIVE=OFF and AVX, AVX2, FMA, F16C, BMI2 (SSE4.2 below them), no AVX-512,
#              no AMX: what every Colab CPU has (Xeon @ 2.2 GHz; some lack AVX-512), so one
#              recipe serves every machine and an archive restores anywhere. Why not native
#              by default: this project's 2-core VMs list AMX in /proc/cpuinfo, and a native
#              build's llama-bench died there with SIGILL on its first batched prompt ("trap
#              invalid opcode in libggml-cpu.so", 2026-12-03), on the very VM that built it.
#   native     (opt-in; the default where x86-64-v3 does not apply, e.g. arm64) -march=native,
#              every instruction this CPU claims: possibly faster on the machine that built
#              it, never shipped, and keyed by this CPU's flags (native-<hash of /proc/cpuinfo's
#              flags>), so a cache carried to another CPU is never reused.
# The cache key says which, so a portable archive is never confused with a native build:
#   ${LLMOPS_CACHE:-~/.cache/llmops}/llama-tools/<version>-<backend>-<baseline>/
#       with <backend> = cpu or cuda<major> (the CUDA toolkit's major version, from nvcc)
#       and <baseline> = x86-64-v3 or native-<8 hex digits>
#       wheel/llama_cpp_python-<version>-*.whl   what setup_env.sh installs into .venv
#       bin/llama-server ... + lib*.so           the tools, RPATH $ORIGIN (they move freely)
#       compiled                                 the CMake options of the compile in bin/ + wheel/
#       tools.json                               the manifest, written last: a finished build
# Steps: compile, check, manifest. The compile's output is kept as soon as it is complete, so
# when the check fails (a missing library, say), a rerun repeats the check only.
# Idempotent (a no-op when built) and safe to run twice at once (flock).
#   llmops_lib/data/build_llama_tools.sh                build if needed
#   llmops_lib/data/build_llama_tools.sh --print-wheel  print the built wheel's path (fails if none)
#   llmops_lib/data/build_llama_tools.sh --print-config print version, backend, key, cache, CMake
#                                                       options and the time estimate; build nothing
# It ships inside the package, so the same recipe runs in a checkout (`make setup`), on a
# release runner and where the course is only pip-installed (Colab: llmops_lib/planning/colab.py runs
# it as the last resort). The environment:
#   LLAMA_CPP_VERSION          the llama-cpp-python version, only where there is no checkout (a
#                              checkout's requirements.txt pin always wins, a different value
#                              here is an error)
#   PYTHON                     the Python whose pip builds the wheel (default: the checkout's
#                              .venv/bin/python, else python3)
#   LLMOPS_LLAMA_BACKEND       cpu|cuda instead of detecting it (Colab knows its runtime)
#   LLMOPS_CPU_BASELINE        x86-64-v3 (default on x86_64) | native, see above
#   LLMOPS_CUDA_ARCHITECTURES  e.g. "75" or "75-real;80-real;89-real;90-real;90-virtual":
#                              compile CUDA for these GPUs only (the manifest records them)
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
DEFAULT_BASELINE=native
[ "$(uname -m)" != x86_64 ] || DEFAULT_BASELINE=x86-64-v3
BASELINE="${LLMOPS_CPU_BASELINE:-$DEFAULT_BASELINE}"
case "$BASELINE" in
x86-64-v3) ;;
native) BASELINE="native-$( (grep -m 1 '^flags' /proc/cpuinfo 2>/dev/null || uname -m) | sha256sum | cut -c1-8)" ;;
*) echo "build_llama_tools: LLMOPS_CPU_BASELINE=$BASELINE (native or x86-64-v3)" >&2; exit 1 ;;
esac

# A CUDA build links the toolkit's libcudart.so.<major> and libcublas.so.<major>: a build for
# one major version never serves another, so the major is part of the key.
CUDA_MAJOR=""
if [ "$BACKEND" = cuda ]; then
    command -v nvcc >/dev/null 2>&1 \
        || { echo "build_llama_tools: the CUDA build needs the CUDA toolkit's nvcc on PATH (on Colab: /usr/local/cuda/bin)" >&2; exit 1; }
    CUDA_MAJOR="$(nvcc --version | sed -n -E 's/.*release ([0-9]+)\..*/\1/p' | head -n 1)"
    [ -n "$CUDA_MAJOR" ] || { echo "build_llama_tools: cannot read the CUDA version from 'nvcc --version'" >&2; exit 1; }
fi
KEY="$VERSION-$BACKEND$CUDA_MAJOR-$BASELINE"
ROOT="${LLMOPS_CACHE:-$HOME/.cache/llmops}/llama-tools/$KEY"
MANIFEST="$ROOT/tools.json"
STAMP="$ROOT/compiled"

# Time on screen: measured where it says so, else labelled as an estimate. CPU, on this
# project's 2-core machine (2026-12-03): a native build took 4 min 40 s at a load of 1.6; the
# portable one compiles the same 226 steps (777 CPU-seconds measured, so about 6.5 min on 2
# idle cores).
case "$BACKEND" in
cpu) ETA="about 5-7 min measured on 2 idle cores; longer on a Colab CPU runtime's 1 physical core (not measured there)" ;;
*) ETA="an estimate, not measured: 20-40 min per GPU architecture on 2 cores" ;;
esac

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
if [ "$BASELINE" = x86-64-v3 ]; then
    [ "$(uname -m)" = x86_64 ] || { echo "build_llama_tools: the x86-64-v3 baseline needs an x86_64 machine, not $(uname -m)" >&2; exit 1; }
    # ggml's own switches for each extension (its CPU code is compiled for exactly these);
    # AVX-512, AVX-VNNI and AMX stay off: a Colab CPU may lack them.
    FLAGS+=(-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON
        -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF
        -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
fi
if [ "$BACKEND" = cuda ]; then
    FLAGS+=(-DGGML_CUDA=on)
    # Only the GPUs the caller names (Colab: the runtime's own; a release: T4, A100, L4, H100),
    # else CMake's default (the visible GPU for a native build). Not part of the key: the
    # manifest records them and colab.py checks they cover the GPU before using a build.
    [ -z "${LLMOPS_CUDA_ARCHITECTURES:-}" ] \
        || FLAGS+=("-DCMAKE_CUDA_ARCHITECTURES=$LLMOPS_CUDA_ARCHITECTURES")
fi
export CMAKE_ARGS="${FLAGS[*]}"

case "${1:-}" in
--print-config)
    printf 'version=%s\nbackend=%s\nbaseline=%s\ncuda_major=%s\nkey=%s\npython=%s\nroot=%s\ncmake_args=%s\nestimate=%s\n' \
        "$VERSION" "$BACKEND" "$BASELINE" "$CUDA_MAJOR" "$KEY" "$PYTHON" "$ROOT" "$CMAKE_ARGS" "$ETA"
    exit 0
    ;;
--print-wheel) ;;
"") ;;
*)
    echo "build_llama_tools: unknown option $1 (--print-wheel, --print-config)" >&2
    exit 2
    ;;
esac

wheel_path() { compgen -G "$ROOT/wheel/llama_cpp_python-$VERSION-*.whl" | head -n 1; }
present() {  # the wheel and every tool
    [ -n "$(wheel_path)" ] || return 1
    for tool in "${TOOLS[@]}"; do [ -x "$ROOT/bin/$tool" ] || return 1; done
}
# Finished: checked, the manifest written (also a build restored from an archive).
built() { [ -f "$MANIFEST" ] && present; }
# Compiled with today's options, maybe not checked yet.
compiled() { [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$CMAKE_ARGS" ] && present; }

if [ "${1:-}" = --print-wheel ]; then
    built || { echo "build_llama_tools: nothing built in $ROOT" >&2; exit 1; }
    wheel_path
    exit 0
fi

# The check: the build as this environment will load it, with its LD_LIBRARY_PATH (Colab
# finds the GPU driver, libcuda.so.1, only through LD_LIBRARY_PATH=/usr/lib64-nvidia), and
# the loader's own words when something is missing. Where there is no GPU driver at all (a
# release runner), a CUDA build is checked as far as it can be: every other library resolves.
check_build() {
    local ldd_out missing name arrow path _ out bin
    ldd_out="$(for tool in "${TOOLS[@]}"; do ldd "$ROOT/bin/$tool" 2>&1; done | sort -u)"
    # The build's own libraries come from bin/ itself ($ORIGIN), not from some other copy.
    bin="$(readlink -f "$ROOT/bin")"
    while read -r name arrow path _; do
        [ "$arrow" = "=>" ] && [ "$path" != not ] && [ -e "$ROOT/bin/$name" ] || continue
        [ "$(dirname "$(readlink -f "$path")")" = "$bin" ] || {
            echo "build_llama_tools: $name resolves to $path, not to $ROOT/bin (RPATH \$ORIGIN lost?)" >&2
            return 1
        }
    done <<<"$ldd_out"
    # Not found, or found only as the toolkit's link-time stub (no driver behind it).
    missing="$(awk '$2 == "=>" && ($3 == "not" || $3 ~ /\/stubs\//) {print $1}' <<<"$ldd_out" | sort -u)"
    if [ "$BACKEND" = cuda ] && grep -qx 'libcuda.so.1' <<<"$missing"; then
        if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
            echo "build_llama_tools: this machine has a GPU, but its driver libcuda.so.1 does not" \
                "resolve with LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-} (on Colab: /usr/lib64-nvidia)" >&2
            return 1
        fi
        missing="$(grep -vx 'libcuda.so.1' <<<"$missing" || true)"
        if [ -z "$missing" ]; then
            echo "  checked: every library the tools need resolves but the GPU driver (libcuda.so.1)," \
                "which this machine lacks; llama-server not started"
            return 0
        fi
    fi
    if [ -n "$missing" ]; then
        echo "build_llama_tools: libraries the tools need do not resolve (LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}):" >&2
        grep -F -w -f <(echo "$missing") <<<"$ldd_out" >&2
        return 1
    fi
    if ! out="$("$ROOT/bin/llama-server" --version 2>&1)"; then
        echo "build_llama_tools: llama-server does not start from $ROOT/bin; the loader says:" >&2
        tail -n 20 <<<"$out" >&2
        return 1
    fi
    echo "  checked: llama-server starts ($(grep -m 1 -i '^version' <<<"$out" || head -n 1 <<<"$out"))"
}

mkdir -p "$ROOT"
# Two concurrent callers (make test in two shells) must not build over each other.
exec 9>"$ROOT/.lock"
flock 9

if built; then
    echo "llama.cpp $VERSION ($KEY): binding wheel and tools up to date in $ROOT"
    exit 0
fi
# No manifest until the check below has passed; any work folder left is from an
# interrupted build (we hold the lock): remove it.
rm -rf "$ROOT"/work.* "$MANIFEST"
START=$SECONDS
LOG="$ROOT/build.log"

if compiled; then
    echo "llama.cpp $VERSION ($KEY): the compile of an earlier run is kept in $ROOT; checking it again"
else
    WORK="$(mktemp -d "$ROOT/work.XXXXXX")"
    trap 'rm -rf "$WORK"' EXIT
    trap 'exit 143' INT TERM HUP
    # Build only the tools: their link dependencies are exactly what the binding installs
    # (llama, ggml*, llama-common, mtmd), so nothing else is compiled. The wheel leaves out
    # bin/ (llama-server would otherwise land in site-packages/bin).
    TARGETS="$(IFS=';'; echo "${TOOLS[*]}")"
    echo "Building llama.cpp once for llama-cpp-python $VERSION ($KEY, $(nproc) cores; $ETA):"
    echo "  the Python binding + ${TOOLS[*]}; full log: $LOG"
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
    # Keep the compile at once (tools, every shared library with its symlinks, the wheel),
    # the stamp last: whatever fails after this point, a rerun does not compile again.
    rm -rf "$STAMP" "${ROOT:?}/bin" "$ROOT/wheel" && mkdir -p "$ROOT/bin" "$ROOT/wheel"
    for tool in "${TOOLS[@]}"; do install -m 755 "$WORK/build/bin/$tool" "$ROOT/bin/$tool"; done
    cp -P "$WORK"/build/bin/lib*.so* "$ROOT/bin/"
    mv "$WORK"/dist/llama_cpp_python-*.whl "$ROOT/wheel/"
    printf '%s' "$CMAKE_ARGS" >"$STAMP"
    rm -rf "$WORK"
fi

check_build || {
    echo "build_llama_tools: the compile is kept in $ROOT; after fixing the above, run this again:" \
        "only the check is repeated" >&2
    exit 1
}
"$PYTHON" - "$ROOT" "$VERSION" "$BACKEND" "$BASELINE" "$CUDA_MAJOR" "${LLMOPS_CUDA_ARCHITECTURES:-}" \
    "$CMAKE_ARGS" "${TOOLS[@]}" <<'EOF'
import json, os, sys
root, version, backend, baseline, cuda_major, archs, cmake_args, *tools = sys.argv[1:]
info = {"llama_cpp_python": version, "backend": backend, "baseline": baseline,
        "cuda_major": int(cuda_major) if cuda_major else None,
        "cuda_architectures": archs or None, "cmake_args": cmake_args,
        "tools": {t: os.path.join(root, "bin", t) for t in tools}}
tmp = os.path.join(root, "tools.json.tmp")
with open(tmp, "w") as f:
    json.dump(info, f, indent=2)
os.replace(tmp, os.path.join(root, "tools.json"))
EOF
t=$((SECONDS - START))
echo "llama.cpp $VERSION ($KEY) ready in $((t / 60))m$((t % 60))s: wheel and tools in $ROOT"
