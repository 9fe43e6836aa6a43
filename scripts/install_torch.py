"""Install torch==2.13.0 into this Python's environment, the build that fits the machine.

scripts/setup_env.sh runs it with .venv/bin/python. PyPI's Linux wheels of torch are the
CUDA build: for 2.13.0 on x86_64 a 527 MB wheel plus 2.2 GB of nvidia-*, cuda-* and triton
wheels (2.7 GB in all, read off PyPI on 2026-12-03), which a machine without an NVIDIA GPU
never uses. There, torch comes from PyTorch's CPU index (192 MB). Where that index cannot
be reached, pip gives up on it within about 10 s (a 4 s timeout, one retry) and the default
index is used. A CPU wheel that pip's own configuration already offers (a local wheel
folder) is still taken: pip looks there as well as in the index it is given. macOS wheels
on PyPI are CPU/MPS builds, and a machine with an NVIDIA GPU wants the CUDA build: both
take the default index.

    python scripts/install_torch.py
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

VERSION = "2.13.0"
TORCH = f"torch=={VERSION}"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# pip's own defaults (15 s, 5 retries with back-off; some machines set 180 s) would spend
# minutes on an index that never answers; with these pip gave up after 8.5 s more than on a
# refused connection, and 0.2 s more where the name does not resolve (measured 2026-12-03).
# pip's check for a newer pip would ask that index too.
QUICK = ("--timeout", "4", "--retries", "1", "--disable-pip-version-check")
PIP = (sys.executable, "-m", "pip", "install", "--progress-bar", "off")
# pip's "Downloading <file or URL> (<size>)" lines ("Using cached ..." is not a download).
_SIZE = re.compile(r"^\s*Downloading \S+ \(([\d.]+) (bytes|kB|MB)\)", re.M)
_UNIT = {"bytes": 1e-6, "kB": 1e-3, "MB": 1.0}


@dataclass(frozen=True)
class Machine:
    system: str  # platform.system(): Linux, Darwin, Windows
    nvidia_gpu: bool


@dataclass(frozen=True)
class Installed:
    version: str
    cuda: bool  # the build ships libtorch_cuda

    @property
    def build(self) -> str:
        return "CUDA build" if self.cuda else "CPU build"


@dataclass(frozen=True)
class Report:
    installed: Installed
    downloaded_mb: float
    cpu_index_failed: bool  # the CPU index was tried and gave nothing


def detect() -> Machine:
    """This machine: its OS, and whether the NVIDIA driver sees a GPU (as build_llama_tools.sh)."""
    gpu = False
    if shutil.which("nvidia-smi"):
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
        gpu = listed.returncode == 0 and "GPU" in listed.stdout
    return Machine(platform.system(), gpu)


def steps(machine: Machine, cpu_index: str = CPU_INDEX) -> list[list[str]]:
    """pip install arguments, run in order; only the last one has to succeed.

    On Linux without an NVIDIA GPU, torch alone (--no-deps: one index page to ask for) from
    the CPU index first; then the plain requirement from the default index, which adds
    torch's dependencies, or, where the first step got nothing, the default build.
    """
    default = [TORCH]
    if machine.system == "Linux" and not machine.nvidia_gpu:
        return [["--no-deps", "--index-url", cpu_index, *QUICK, TORCH], default]
    return [default]


def downloaded_mb(output: str) -> float:
    """What pip downloaded, in MB, from its log of what it fetched."""
    return sum(float(size) * _UNIT[unit] for size, unit in _SIZE.findall(output))


def installed(python: str) -> Installed | None:
    """The torch in `python`'s environment, read from its metadata (no import)."""
    code = (
        "import importlib.metadata as m, json\n"
        "try:\n"
        "    d = m.distribution('torch')\n"
        "except m.PackageNotFoundError:\n"
        "    print('null')\n"
        "else:\n"
        "    cuda = any('libtorch_cuda' in f.name for f in d.files or ())\n"
        "    print(json.dumps([d.version, cuda]))\n"
    )
    found = json.loads(subprocess.run([python, "-c", code], capture_output=True, check=True).stdout)
    return Installed(*found) if found else None


def _pip(pip: Sequence[str], args: list[str]) -> tuple[int, str]:
    """Run pip, showing its output as it comes, and return its exit code and output."""
    proc = subprocess.Popen(
        [*pip, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    return proc.wait(), "".join(lines)


def install(machine: Machine, pip: Sequence[str] = PIP, cpu_index: str = CPU_INDEX) -> Report:
    """Run `steps` with `pip` (a Python, then `-m pip install` and options) and say what came
    of it."""
    plan = steps(machine, cpu_index)
    downloaded = 0.0
    failed = False
    for number, args in enumerate(plan, 1):
        code, output = _pip(pip, args)
        downloaded += downloaded_mb(output)
        if code == 0:
            continue
        if number == len(plan):
            raise SystemExit(f"install_torch: pip could not install {TORCH} (exit {code})")
        failed = True
        print(
            f"install_torch: PyTorch's CPU index ({cpu_index}) gave no {TORCH} (not reachable "
            "from here?); falling back to the default index, whose Linux wheels are the CUDA "
            "build (2.7 GB on x86_64)",
            flush=True,
        )
    now = installed(pip[0])
    if now is None:
        raise SystemExit(f"install_torch: pip succeeded but no torch is installed in {pip[0]}")
    return Report(now, downloaded, failed)


def summary(report: Report) -> str:
    """The one line setup prints: which build, and what it cost to download."""
    line = (
        f"torch {report.installed.version} ({report.installed.build}): "
        f"{report.downloaded_mb:.1f} MB downloaded"
    )
    if report.cpu_index_failed:
        line += "; PyTorch's CPU index could not be used"
    return line


def main() -> None:
    present = installed(sys.executable)
    if present and present.version.split("+")[0] == VERSION:
        print(f"torch {present.version} ({present.build}) is already installed")
        return
    print(summary(install(detect())))


if __name__ == "__main__":
    main()
