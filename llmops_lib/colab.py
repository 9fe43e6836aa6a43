"""On Colab: llama.cpp on the runtime's own backend, built once and kept in Drive.

Why: Colab has no llama-cpp-python wheel for its Python, so `pip install llama-cpp-python`
compiles a CPU-only build on every new runtime (7-15 minutes, silently), and on a GPU runtime
llama.cpp then never uses the GPU; and the course's notebooks 03, 07, 09 and 10 also run
llama.cpp's own tools (llama-server, llama-bench, ...), which pip never builds. So the
[colab] extra leaves llama-cpp-python out, and `setup()` calls `ensure_llama_cpp()`: it runs
the course's one build script (data/build_llama_tools.sh, as `make setup` does locally) once,
CUDA on a GPU runtime and only for Colab's GPUs, which gives the binding's wheel AND the
tools; it keeps that build in Google Drive as one archive per version, backend and Python.
A later runtime restores the archive into the local tools cache (running binaries straight
from the Drive mount is not reliable) and installs the wheel from it: seconds. Without Drive
mounted the archive is kept on the runtime's disk only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import deque
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .provision import cache_dir
from .tools import SCRIPT, TOOLS

# The pin of requirements.txt (tests/test_colab_install.py checks that they agree).
LLAMA_CPP_VERSION = "0.3.36"
DRIVE = Path("/content/drive/MyDrive")
# T4 (7.5), A100 (8.0), L4 (8.9): compiling for these only takes a fraction of all targets.
CUDA_ARCHITECTURES = "75;80;89"
# Estimates for Colab, not measured here (no Colab runtime in CI).
ESTIMATE = {"cpu": "10-15 min on Colab's 2 cores", "cuda": "20-30 min on Colab"}
MOUNT_HINT = (
    "Mount Google Drive first (`from google.colab import drive; drive.mount('/content/drive')`) "
    "to keep this build for every later session."
)
TAIL_LINES = 40


def store_dir(drive: Path = DRIVE) -> Path:
    """Where builds are kept: Drive when mounted (survives the runtime), else local disk."""
    return drive / "llmops-llama-cpp" if drive.is_dir() else Path("/content/llmops-llama-cpp")


def build_tag(backend: str, python: tuple[int, int] = sys.version_info[:2]) -> str:
    """The cache key: a CUDA build never serves a CPU runtime, nor the reverse."""
    return f"llama-cpp-{LLAMA_CPP_VERSION}-{backend}-py{python[0]}{python[1]}"


def local_dir(backend: str) -> Path:
    """The local tools cache that tools.py and the build script use (same key, same layout)."""
    return cache_dir() / "llama-tools" / f"{LLAMA_CPP_VERSION}-{backend}"


def find_wheel(root: Path) -> Path | None:
    wheels = sorted((root / "wheel").glob(f"llama_cpp_python-{LLAMA_CPP_VERSION}-*.whl"))
    return wheels[-1] if wheels else None


def complete(root: Path) -> bool:
    """A finished build: manifest, wheel and every tool (the script's own test)."""
    return (
        (root / "tools.json").is_file()
        and find_wheel(root) is not None
        and all(os.access(root / "bin" / tool, os.X_OK) for tool in TOOLS)
    )


def installed_backend() -> str | None:
    """'cpu' or 'cuda' for an installed llama-cpp-python of the pinned version, else None."""
    try:
        if version("llama-cpp-python") != LLAMA_CPP_VERSION:
            return None
    except PackageNotFoundError:
        return None
    from .tools import backend

    return backend()


def plan(want: str, installed: str | None, local: bool, archived: bool) -> str:
    """What to do: 'ready', 'install' the local build, 'restore' the archive, or 'build'."""
    if local:
        return "ready" if installed == want else "install"
    return "restore" if archived else "build"


def build(backend: str) -> Path:
    """Run the course's build script for `backend`, echoing its progress; the build's folder.

    On failure the error carries the build's last lines (the script prints its log's tail).
    """
    env = dict(
        os.environ,
        LLAMA_CPP_VERSION=LLAMA_CPP_VERSION,
        PYTHON=sys.executable,
        LLMOPS_LLAMA_BACKEND=backend,
        LLMOPS_CACHE=str(cache_dir()),
    )
    if backend == "cuda":
        env["LLMOPS_CUDA_ARCHITECTURES"] = CUDA_ARCHITECTURES
    print(
        f"Building llama.cpp {LLAMA_CPP_VERSION} ({backend}) once on this runtime: the Python "
        f"binding and llama.cpp's tools, about {ESTIMATE[backend]} (an estimate)."
    )
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with subprocess.Popen(
        ["bash", str(SCRIPT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        for line in proc.stdout:
            tail.append(line.rstrip())
            print(line, end="", flush=True)
    root = local_dir(backend)
    if proc.returncode != 0 or not complete(root):
        why = f"exit {proc.returncode}" if proc.returncode else f"no complete build in {root}"
        last = "\n".join(tail)
        raise RuntimeError(f"Building llama.cpp failed ({why}); last lines:\n{last}")
    return root


def store(root: Path, archive: Path) -> Path:
    """Keep the build `root` as one .tar at `archive` (written whole, then renamed)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(archive.name + ".part")
    with tarfile.open(tmp, "w") as tar:
        for name in ("tools.json", "wheel", "bin"):
            tar.add(root / name, arcname=f"{root.name}/{name}")
    os.replace(tmp, archive)
    return archive


def restore(archive: Path, root: Path) -> Path:
    """Unpack `archive` into the local tools cache at `root`, its manifest pointing there."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")
            else:  # Python before 3.11.4
                tar.extractall(tmp)  # noqa: S202 (our own archive)
        unpacked = Path(tmp) / root.name
        info = json.loads((unpacked / "tools.json").read_text())
        info["tools"] = {tool: str(root / "bin" / tool) for tool in info["tools"]}
        (unpacked / "tools.json").write_text(json.dumps(info, indent=2))
        shutil.rmtree(root, ignore_errors=True)
        unpacked.rename(root)
    return root


def ensure_llama_cpp(has_gpu: bool, drive: Path = DRIVE) -> str:
    """Make the pinned llama-cpp-python importable and llama.cpp's tools runnable on this
    runtime's backend; say what it did."""
    want = "cuda" if has_gpu else "cpu"
    root, archive = local_dir(want), store_dir(drive) / f"{build_tag(want)}.tar"
    action = plan(want, installed_backend(), complete(root), archive.is_file())
    if action == "restore":
        print(f"Restoring the llama.cpp {want} build from {archive} ...", flush=True)
        restore(archive, root)
    elif action == "build":
        if not drive.is_dir():
            print(MOUNT_HINT)
        build(want)
    if not archive.is_file():  # just built, or built before Drive was mounted
        print(f"Keeping the build in {store(root, archive)}", flush=True)
    if action == "ready":
        return f"llama.cpp {LLAMA_CPP_VERSION} ({want}): binding installed, tools in {root / 'bin'}"
    wheel = find_wheel(root)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall"]
    subprocess.run([*pip, str(wheel)], check=True)
    return (
        f"llama.cpp {LLAMA_CPP_VERSION} ({want}): binding installed from {wheel.name}, "
        f"tools in {root / 'bin'} (kept in {archive})"
    )
