"""Where llama.cpp's own tools are: built from the pinned llama-cpp-python source.

Why: llama-cpp-python wraps the engine for one caller at a time. `llama-bench` measures
the raw engine, `llama-server` runs parallel slots (continuous batching), and
`llama-perplexity` / `llama-quantize` / `llama-imatrix` judge and make quantized files.
One script, shipped in the package (data/build_llama_tools.sh), builds them and the
binding's wheel into a cache outside the work tree, one folder per build (version, backend,
CPU baseline), and lists them in tools.json: `make setup` runs it in a checkout, and on
Colab llmops_lib/planning/colab.py provisions a build on first use. This module finds the tools of
exactly the build the installed binding came from: pip records the wheel's path in the
binding's direct_url.json.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from ..core.errors import unknown
from .memory import kv_bytes_per_value
from .provision import cache_dir

TOOLS = ("llama-server", "llama-bench", "llama-perplexity", "llama-quantize", "llama-imatrix")
SCRIPT = Path(__file__).resolve().parents[1] / "data" / "build_llama_tools.sh"


def build_hint(checkout: bool) -> str:
    """How to build the tools: `make` only in a clone of the repo, not in a pip install."""
    if checkout:
        return (
            "build them with `make setup` in the course's checkout "
            "(llmops_lib/data/build_llama_tools.sh; about 5 min on 2 idle cores, measured; "
            "once per llama-cpp-python version)"
        )
    return (
        "on Colab the first llama.cpp cell provisions them (llmops_lib.planning.colab); elsewhere "
        "run "
        f"`LLAMA_CPP_VERSION=<version> bash {SCRIPT}`, then install the binding it built: "
        f"`pip install --no-deps --force-reinstall $(bash {SCRIPT} --print-wheel)`"
    )


BUILD_HINT = build_hint((SCRIPT.parents[2] / "Makefile").is_file())


class ToolsNotBuiltError(FileNotFoundError):
    """llama.cpp's native tools for this llama-cpp-python version are not built yet."""


BUILDS = "llama-tools"  # the cache folder of the builds, one folder per key in it


def builds_dir() -> Path:
    """Where every llama.cpp build lives, as the build script writes it: <cache>/llama-tools."""
    return cache_dir() / BUILDS


def installed_key() -> str | None:
    """The cache key (folder name) of the course build the installed llama-cpp-python's wheel
    came from, read from pip's direct_url.json; None when it is not installed or came from
    elsewhere (an index, a source build of pip's own)."""
    try:
        record = distribution("llama-cpp-python").read_text("direct_url.json")
    except PackageNotFoundError:
        return None
    url = urlparse(json.loads(record)["url"]) if record else None
    if url is None or url.scheme != "file":
        return None
    wheel = Path(unquote(url.path))  # <cache>/llama-tools/<key>/wheel/<name>.whl
    if wheel.parent.name != "wheel" or wheel.parents[2].name != BUILDS:
        return None
    return wheel.parents[1].name


def tools_dir() -> Path:
    """Cache folder of the tools of the installed llama-cpp-python's own build."""
    key = installed_key()
    if key is None:
        raise ToolsNotBuiltError(
            "llama.cpp's native tools are found through the course's build of "
            "llama-cpp-python, and the one installed here is not from it (or none is); "
            f"{BUILD_HINT}."
        )
    return builds_dir() / key


def tools() -> dict[str, Any]:
    """The build record (tools.json): version, backend (cpu/cuda) and each tool's path."""
    from .colab import ensure_llama_cpp  # on Colab, the first tool provisions llama.cpp

    ensure_llama_cpp()
    manifest = tools_dir() / "tools.json"
    if not manifest.is_file():
        raise ToolsNotBuiltError(
            f"llama.cpp's native tools are not built for the installed llama-cpp-python "
            f"(no {manifest}); {BUILD_HINT}."
        )
    return json.loads(manifest.read_text())


def tool_path(name: str) -> Path:
    """Path of one built tool, e.g. tool_path('llama-bench')."""
    if name not in TOOLS:
        raise unknown(name, "llama.cpp tool", TOOLS)
    built = tools()["tools"]
    if name not in built:  # a build from before the tool joined TOOLS
        raise ToolsNotBuiltError(
            f"{name} is not among the built tools ({', '.join(built)}): the build predates "
            f"it; {BUILD_HINT}."
        )
    path = Path(built[name])
    if not path.is_file():
        raise ToolsNotBuiltError(f"{name} is listed but missing at {path}; {BUILD_HINT}.")
    return path


def missing(*names: str) -> str | None:
    """Why a notebook's tool section cannot run here (one line), or None when it can.

    For the lessons: they print this and skip the section instead of stopping half-way;
    direct library calls still raise ToolsNotBuiltError.
    """
    try:
        for name in names or TOOLS:
            tool_path(name)
    except ToolsNotBuiltError as err:
        return str(err)
    return None


def say_skipped(reason: str) -> None:
    """The one line a lesson prints for a section it skips because a tool is missing."""
    print(f"skipped: {reason}")


def skipped(reason: str, index: Any, columns: Any) -> Any:
    """A lesson's table when its tool is missing: the reason printed on one line, then the
    table's rows and columns with no figures (NaN), `attrs["skipped"]` holding the reason,
    so the cells after it show empty figures instead of stopping the notebook."""
    import pandas as pd

    say_skipped(reason)
    frame = pd.DataFrame(float("nan"), index=index, columns=columns)
    frame.attrs["skipped"] = reason
    return frame


def kv_cache_flags(kv_type: str) -> list[str]:
    """The flags that give llama-perplexity, llama-bench and llama-server a KV cache of
    `kv_type` (memory.KV_TYPES: f16, q8_0, q4_0, ...); an unknown type is refused here.

    Flash attention is switched on for every type, f16 included: llama.cpp refuses a
    quantized V cache without it ("quantized V cache requires flash_attn"), and a comparison
    of cache types must differ in the cache only.
    """
    kv_bytes_per_value(kv_type)
    return ["-fa", "on", "-ctk", kv_type, "-ctv", kv_type]


def shown_command(args: Iterable[str | Path | int]) -> str:
    """A command line as a reader types it: each absolute path (a tool, a model in the cache)
    shortened to its file name, so a stored notebook output shows no local folders."""
    words = [str(arg) for arg in args]
    return shlex.join(Path(word).name if word.startswith("/") else word for word in words)
