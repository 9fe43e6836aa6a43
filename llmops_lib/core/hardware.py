"""What machine are we on? CPU, RAM, GPU and where the notebook runs.

Every later choice (profile, precision, n_gpu_layers, threads) depends on these
facts, so they are detected once, in one place, without importing torch when it
is not installed (a laptop may not have it).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from .errors import InputError, whole

CORES_VARIABLE = "LLMOPS_CORES"


@dataclass(frozen=True)
class Hardware:
    """A snapshot of the machine a notebook runs on."""

    runtime: str  # "colab", "ci" or "local"
    cpu_physical_cores: int
    cpu_logical_cores: int
    ram_gb: float
    gpu_name: str | None
    gpu_vram_gb: float | None
    compute_capability: tuple[int, int] | None
    bf16: bool
    hf_token: bool

    @property
    def has_gpu(self) -> bool:
        return self.gpu_name is not None

    def as_rows(self) -> list[tuple[str, str]]:
        """Rows for the summary table that setup() prints."""
        busy = busy_cores()
        gpu = "none"
        if self.gpu_name:
            major, minor = self.compute_capability or (0, 0)
            gpu = f"{self.gpu_name}, {self.gpu_vram_gb:.1f} GB, compute {major}.{minor}"
        return [
            ("runtime", self.runtime),
            ("CPU cores", f"{self.cpu_physical_cores} physical / {self.cpu_logical_cores} logical"),
            ("RAM", f"{self.ram_gb:.1f} GB"),
            (
                "llama.cpp threads",
                f"{default_threads(self.cpu_physical_cores, busy)} (other programs busy on"
                f" {busy:.1f} cores now)",
            ),
            ("GPU", gpu),
            ("bf16", "yes" if self.bf16 else "no"),
            ("HF token", "found" if self.hf_token else "not set"),
        ]


def machine_cores() -> int:
    """This machine's physical CPU cores (hyper-threads not counted; all cores if unknown)."""
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def physical_cores() -> int:
    """The physical cores the course may use: the machine's, or fewer where LLMOPS_CORES says.

    `make test` runs two workers and gives each half the cores this way (torch gets the same
    share through OMP_NUM_THREADS): threads of two programs that share a core stall each
    other at every step, and notebooks 02 and 08 side by side on 2 cores took 30 and 19
    minutes instead of about one each.
    """
    machine = machine_cores()
    share = os.environ.get(CORES_VARIABLE, "").strip()
    if not share:
        return machine
    if not share.isdigit() or int(share) < 1:
        raise InputError(
            f"{CORES_VARIABLE}={share!r}: give a whole number of cores, at least 1, or unset"
            f" it to use all {machine} of this machine"
        )
    return min(machine, int(share))


def default_threads(cores: int | None = None, busy: float | None = None) -> int:
    """llama.cpp's default thread count, for decoding and prompts alike: the physical cores
    that other programs leave idle right now.

    Decoding is memory bound, so hyper-threads do not help, but every physical core does
    (notebook 07's sweep). llama.cpp's threads wait for each other at every step, so one
    that shares its core with another program stalls them all (16 tokens on a busy 2-core
    machine: 40.7 s with 2 threads, 0.42 s with 1): cores that are busy when a model or
    server starts (busy_cores, a short sample) are left out. Never fewer than 1 thread.
    `cores` and `busy` default to this machine's.
    """
    if cores is None:
        cores = physical_cores()
    if busy is None:
        busy = busy_cores()
    return max(1, min(cores, round(cores - busy)))


def threads(n_threads: int | None, default: Callable[[], int] | None = None) -> int:
    """The threads a caller asked for, or `default()` (default_threads) for None: the one
    rule of every engine and tool, so 0 means the same everywhere (refused, never "auto")."""
    if n_threads is None:
        return (default or default_threads)()
    return whole("n_threads", n_threads)


def busy_cores(interval_s: float = 0.25) -> float:
    """Physical cores' worth of CPU that programs use right now: a short sample, unlike the
    1-minute load average, which still counts work that ended a minute ago (in a notebook,
    often its own previous cell)."""
    return psutil.cpu_percent(interval=interval_s) / 100 * machine_cores()


def runtime() -> str:
    """'colab' inside Google Colab, 'ci' when the CI variable is set, else 'local'."""
    if "google.colab" in sys.modules or os.environ.get("COLAB_RELEASE_TAG"):
        return "colab"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        return "ci"
    return "local"


def checkout() -> bool:
    """True when the library is imported from the course's checkout (its Makefile beside
    the package), False in a pip install (Colab, site-packages). Hints name `make ...` or a
    repository file only where they exist."""
    return (Path(__file__).resolve().parents[2] / "Makefile").is_file()


def _gpu() -> tuple[str | None, float | None, tuple[int, int] | None]:
    """Name, VRAM (GB) and compute capability of GPU 0, via torch if it is installed."""
    if importlib.util.find_spec("torch") is None:
        return None, None, None
    import torch

    if not torch.cuda.is_available():
        return None, None, None
    props = torch.cuda.get_device_properties(0)
    return props.name, props.total_memory / 1e9, (props.major, props.minor)


def has_hf_token() -> bool:
    """True when huggingface_hub finds a token (env var, login cache or Colab secret)."""
    from huggingface_hub import get_token

    try:
        return bool(get_token())
    except Exception:  # a Colab secret lookup can fail outside an interactive session
        return False


def detect(check_token: bool = True) -> Hardware:
    """Detect the hardware once; cheap enough to call at the top of every notebook.

    check_token=False skips importing huggingface_hub, so setup() can switch it to
    offline mode first (it reads HF_HUB_OFFLINE once, at import).
    """
    name, vram, cc = _gpu()
    return Hardware(
        runtime=runtime(),
        cpu_physical_cores=physical_cores(),
        cpu_logical_cores=psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        ram_gb=psutil.virtual_memory().total / 1e9,
        gpu_name=name,
        gpu_vram_gb=vram,
        compute_capability=cc,
        bf16=bool(cc and cc >= (8, 0)),
        hf_token=has_hf_token() if check_token else False,
    )


def release() -> None:
    """Free the memory of models nothing refers to any more, now: collect them, then hand
    the GPU's cached blocks back to the driver.

    Why collect: bitsandbytes' 4-bit weights sit in reference cycles, so `del model` alone
    leaves them in memory until the garbage collector happens to run (seen on a CPU with
    bitsandbytes 0.50.2), and a T4 holds one 8B model, not two. Call it after dropping a
    model and before loading the next; HFModel does both itself.
    """
    import gc

    gc.collect()
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def is_out_of_memory(err: BaseException) -> bool:
    """True when `err` says an allocation failed: torch's OutOfMemoryError (CUDA), a CUDA
    extension's RuntimeError saying "out of memory" (bitsandbytes' kernels), a MemoryError."""
    import torch

    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
