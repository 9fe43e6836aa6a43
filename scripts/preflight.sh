#!/usr/bin/env bash
# What the rest of the setup needs, checked before anything is installed, so that a missing
# tool is named at once (one line each, with the package that brings it) instead of after
# minutes of installing, and nothing is left half-made. Run by setup_env.sh first and by
# `make setup` before the llama.cpp build; it checks only what is still to come:
#   no .venv yet:            Python 3.11+ (PYTHON, default python3) that can make a venv
#   llama.cpp not built yet: a working C and C++ compiler, and flock
#   either:                  the disk space for it
# cmake and ninja are not needed: the build (scikit-build-core, in pip's isolated build
# environment) downloads them from PyPI where the machine has none or too old a one.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
# Measured on Linux x86_64: .venv 2.5 GB with the CPU build of torch, plus what pip keeps
# of its downloads (518 MB besides torch on a fresh clone); the llama.cpp build 493 MB at
# its peak. With the CUDA build of torch 2.7 GB more to download and several GB more
# installed (estimated from the wheel sizes, not measured). Rounded up.
VENV_GB=4
VENV_GB_CUDA=11
BUILD_GB=1

if [ "$(uname -s)" = Darwin ]; then
    OS=mac
elif command -v apt-get >/dev/null 2>&1; then
    OS=apt
else
    OS=other
fi
failed=

# problem WHAT APT_PACKAGES MAC_COMMAND OTHER: one line naming the fix for this system.
problem() {
    case "$OS" in
    apt) fix="sudo apt install $2" ;;
    mac) fix="$3" ;;
    *) fix="$4" ;;
    esac
    echo "setup: $1; install it first: $fix" >&2
    failed=1
}

if [ ! -x .venv/bin/python ]; then
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        problem "no $PYTHON (Python 3.11 or newer is needed)" "python3 python3-venv" \
            "brew install python@3.12" "Python 3.11 or newer"
    else
        version="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)"
        if [ -z "$version" ] || ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            problem "$PYTHON is Python ${version:-of an unknown version}, 3.11 or newer is needed (pandas 3 and other pins), then run again with PYTHON=python3.11 (or newer)" \
                "python3.11 python3.11-venv" "brew install python@3.12" "Python 3.11 or newer"
        elif ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
            problem "$PYTHON cannot make a virtual environment (no ensurepip)" \
                "python$version-venv" "Python from python.org or brew install python@3.12" \
                "Python's venv module with ensurepip"
        fi
    fi
fi

# llama.cpp's build is cached outside the repo; --print-wheel fails while it is missing.
if ! llmops_lib/data/build_llama_tools.sh --print-wheel >/dev/null 2>&1; then
    build=1
    tmp="$(mktemp -d)"
    # CMake looks for these names (CC and CXX first); a compiler must also find its headers.
    works() { # works LANGUAGE SOURCE NAME...
        local lang="$1" source="$2" name
        shift 2
        for name in "$@"; do
            [ -n "$name" ] && command -v "${name%% *}" >/dev/null 2>&1 || continue
            printf '%b' "$source" | $name -x "$lang" - -o "$tmp/a.out" >/dev/null 2>&1 && return 0
        done
        return 1
    }
    missing=
    works c '#include <stdio.h>\nint main(void) { return 0; }\n' "${CC:-}" cc gcc clang \
        || missing="C"
    works c++ '#include <vector>\nint main() { return std::vector<int>().size(); }\n' \
        "${CXX:-}" c++ g++ clang++ \
        || missing="${missing:+$missing and }C++"
    case "$missing" in
    "C and C++") apt_fix=build-essential ;;
    C) apt_fix=gcc ;;
    C++) apt_fix=g++ ;;
    esac
    [ -z "$missing" ] || problem "no working $missing compiler (llama.cpp is compiled from source)" \
        "$apt_fix" "xcode-select --install" "a $missing compiler (gcc/g++ or clang)"
    rm -rf "$tmp"
    command -v flock >/dev/null 2>&1 \
        || problem "no flock (the llama.cpp build takes a lock)" util-linux "brew install flock" \
            util-linux
fi

# space DIR GB: the filesystem that holds DIR (or its nearest existing parent) has GB free.
nearest() {
    local dir="$1"
    while [ ! -d "$dir" ]; do dir="$(dirname "$dir")"; done
    echo "$dir"
}
filesystem() { df -Pk "$1" | awk 'NR == 2 { print $1 }'; }
space() {
    local have
    [ "$2" -gt 0 ] || return 0
    have="$(df -Pk "$1" | awk 'NR == 2 { print int($4 / 1024 / 1024) }')"
    if [ "${have:-0}" -lt "$2" ]; then
        echo "setup: $have GB free for $(cd "$1" && pwd), the setup needs about $2 GB there; free some space first (or set LLMOPS_CACHE to a folder on another disk for the llama.cpp build)" >&2
        failed=1
    fi
}
need_venv=0
if [ ! -f .venv/.installed ]; then
    need_venv=$VENV_GB
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        need_venv=$VENV_GB_CUDA
    fi
fi
need_build=$((${build:-0} * BUILD_GB))
cache="$(nearest "${LLMOPS_CACHE:-$HOME/.cache/llmops}")"
if [ "$(filesystem .)" = "$(filesystem "$cache")" ]; then
    space . $((need_venv + need_build))
else
    space . "$need_venv"
    space "$cache" "$need_build"
fi

[ -z "$failed" ]
