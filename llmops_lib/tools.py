"""Where llama.cpp's own tools are: built from the pinned llama-cpp-python source.

Why: llama-cpp-python wraps the engine for one caller at a time. `llama-bench` measures
the raw engine, `llama-server` runs parallel slots (continuous batching), and
`llama-perplexity` / `llama-quantize` / `llama-imatrix` judge and make quantized files.
`make setup` builds them into a cache outside the work tree, keyed by the llama-cpp-python
version, and lists them in tools.json; this module only finds them.
"""

from __future__ import annotations

import importlib.util
import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

from .errors import unknown
from .provision import cache_dir

TOOLS = ("llama-server", "llama-bench", "llama-perplexity", "llama-quantize", "llama-imatrix")
_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_llama_tools.sh"
BUILD_HINT = (
    "build them with `make setup` in the course's checkout (scripts/build_llama_tools.sh; "
    "about 7 min on 2 cores, once per llama-cpp-python version)"
    if _SCRIPT.is_file()
    else "they are built by `make setup` in a checkout of the course's repository; this "
    "installation (e.g. Colab) has no build script: skip the cells that need these tools"
)


class ToolsNotBuiltError(FileNotFoundError):
    """llama.cpp's native tools for this llama-cpp-python version are not built yet."""


def backend() -> str:
    """'cuda' if the installed llama-cpp-python was built with CUDA, else 'cpu' (from its
    files, without importing it), so the tools found come from the binding's own build."""
    spec = importlib.util.find_spec("llama_cpp")
    lib = Path(spec.origin).parent / "lib" if spec and spec.origin else None
    return "cuda" if lib is not None and any(lib.glob("libggml-cuda*")) else "cpu"


def tools_dir() -> Path:
    """Cache folder of the tools for the installed llama-cpp-python (same build, same key)."""
    return cache_dir() / "llama-tools" / f"{version('llama-cpp-python')}-{backend()}"


def tools() -> dict[str, Any]:
    """The build record (tools.json): version, backend (cpu/cuda) and each tool's path."""
    manifest = tools_dir() / "tools.json"
    if not manifest.is_file():
        raise ToolsNotBuiltError(
            f"llama.cpp's native tools are not built for llama-cpp-python "
            f"{version('llama-cpp-python')} (no {manifest}); {BUILD_HINT}."
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
