"""On Colab: llama-cpp-python on the runtime's own backend, compiled once and kept in Drive.

Why: Colab has no llama-cpp-python wheel for its Python, so `pip install llama-cpp-python`
compiles a CPU-only build on every new runtime (7-15 minutes, silently), and on a GPU runtime
llama.cpp then never uses the GPU. So the [colab] extra leaves it out, and `setup()` calls
`ensure_llama_cpp()`: it installs the wheel kept in Google Drive for this llama-cpp-python
version, Python and backend (seconds), or else compiles that wheel once, CUDA on a GPU
runtime and only for Colab's GPUs, with progress, and keeps it in Drive for every later
notebook and session. Without Drive mounted the wheel is kept on the runtime's disk only.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# The pin of requirements.txt (tests/test_colab_install.py checks that they agree).
LLAMA_CPP_VERSION = "0.3.36"
DRIVE = Path("/content/drive/MyDrive")
# T4 (7.5), A100 (8.0), L4 (8.9): compiling for these only takes a fraction of all targets.
CUDA_ARCHITECTURES = "75;80;89"
MOUNT_HINT = (
    "Mount Google Drive first (`from google.colab import drive; drive.mount('/content/drive')`) "
    "to keep the compiled wheel for every later session."
)


def wheel_dir(drive: Path = DRIVE) -> Path:
    """Where wheels are kept: Drive when mounted (survives the runtime), else local disk."""
    return drive / "llmops-wheels" if drive.is_dir() else Path("/content/llmops-wheels")


def wheel_tag(backend: str, python: tuple[int, int] = sys.version_info[:2]) -> str:
    """The cache key: a CUDA wheel never serves a CPU runtime, nor the reverse."""
    return f"llama-cpp-python-{LLAMA_CPP_VERSION}-{backend}-py{python[0]}{python[1]}"


def find_wheel(directory: Path, tag: str) -> Path | None:
    wheels = sorted((directory / tag).glob("llama_cpp_python-*.whl"))
    return wheels[-1] if wheels else None


def installed_backend() -> str | None:
    """'cpu' or 'cuda' for an installed llama-cpp-python of the pinned version, else None."""
    try:
        if version("llama-cpp-python") != LLAMA_CPP_VERSION:
            return None
    except PackageNotFoundError:
        return None
    from .tools import backend

    return backend()


def plan(want: str, installed: str | None, cached: Path | None) -> str:
    """What to do: 'ready', 'install' the cached wheel, or 'build' one."""
    if installed == want:
        return "ready"
    return "install" if cached is not None else "build"


def build_wheel(backend: str, target: Path) -> Path:
    """Compile the pinned llama-cpp-python into a wheel under `target`, printing progress."""
    env = dict(os.environ)
    if backend == "cuda":
        env["CMAKE_ARGS"] = f"-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES={CUDA_ARCHITECTURES}"
    estimate = "20-30 min for CUDA" if backend == "cuda" else "7-15 min"
    print(f"Compiling llama-cpp-python {LLAMA_CPP_VERSION} ({backend}) once: {estimate} on Colab.")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-cache-dir"]
        cmd += ["--no-binary", "llama-cpp-python", "-w", tmp]
        cmd += [f"llama-cpp-python=={LLAMA_CPP_VERSION}"]
        with subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc:
            tail = report_progress(proc.stdout)
        if proc.returncode != 0:
            raise RuntimeError(
                f"Compiling llama-cpp-python failed (exit {proc.returncode}); last lines:\n{tail}"
            )
        (wheel,) = Path(tmp).glob("llama_cpp_python-*.whl")
        target.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy2(wheel, target / wheel.name))


def report_progress(lines, step: int = 10) -> str:
    """Print one line per `step` % of the compiler's [done/total] counter; return the tail."""
    shown, tail = 0, []
    for line in lines:
        tail = (tail + [line.rstrip()])[-20:]
        match = re.search(r"\[(\d+)/(\d+)\]", line)
        if match:
            percent = int(match[1]) * 100 // int(match[2])
            if percent >= shown + step:
                shown = percent - percent % step
                print(f"  llama.cpp build {shown:3d}%", flush=True)
    return "\n".join(tail)


def ensure_llama_cpp(has_gpu: bool, drive: Path = DRIVE) -> str:
    """Make the pinned llama-cpp-python importable on this runtime's backend; say what it did."""
    want = "cuda" if has_gpu else "cpu"
    directory, tag = wheel_dir(drive), wheel_tag(want)
    cached = find_wheel(directory, tag)
    action = plan(want, installed_backend(), cached)
    if action == "ready":
        return f"llama-cpp-python {LLAMA_CPP_VERSION} ({want}) is installed"
    if action == "build":
        if not drive.is_dir():
            print(MOUNT_HINT)
        cached = build_wheel(want, directory / tag)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall"]
    subprocess.run([*pip, str(cached)], check=True)
    return f"llama-cpp-python {LLAMA_CPP_VERSION} ({want}) installed from {cached.parent}"
