"""llama.cpp's own tools, built from the pinned llama-cpp-python source: bench and server.

Why: llama-cpp-python wraps the engine for one caller at a time. `llama-bench` measures the
raw engine (a baseline to hold the library's own figures against), and `llama-server` runs
parallel slots with continuous batching, which is what serves many users on one machine.
`scripts/build_llama_tools.sh` (called by `make setup`) builds them into a cache outside
the work tree, keyed by the installed llama-cpp-python version, and lists them in
tools.json; this module only finds and runs them.
"""

from __future__ import annotations

import json
import math
import subprocess
import urllib.request
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pandas as pd

from .llamacpp import GEMMA_TEMPLATE, check_gguf, default_threads
from .provision import cache_dir
from .server import HOST, ServerProcess, positive

TOOLS = ("llama-server", "llama-bench", "llama-perplexity", "llama-quantize")
BUILD_HINT = (
    "build them with `make setup` (or `scripts/build_llama_tools.sh` in the repository; "
    "about 7 min on 2 cores, once per llama-cpp-python version)"
)


class ToolsNotBuiltError(FileNotFoundError):
    """llama.cpp's native tools for this llama-cpp-python version are not built yet."""


def tools_dir() -> Path:
    """Cache folder of the tools for the installed llama-cpp-python (same engine, same key)."""
    return cache_dir() / "llama-tools" / version("llama-cpp-python")


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
        raise ValueError(f"Unknown llama.cpp tool {name!r}; the built ones are {', '.join(TOOLS)}.")
    path = Path(tools()["tools"][name])
    if not path.is_file():
        raise ToolsNotBuiltError(f"{name} is listed but missing at {path}; {BUILD_HINT}.")
    return path


def llama_bench(
    model_path: str | Path,
    n_threads: int | None = None,
    n_prompt: int = 128,
    n_gen: int = 64,
    reps: int = 3,
    n_depth: tuple[int, ...] = (0,),
    n_gpu_layers: int | None = None,
    timeout_s: float = 600,
) -> pd.DataFrame:
    """Run llama-bench: prefill (pp) and decode (tg) tokens/s, mean and std over `reps`.

    One row per test and depth (`pp128`, `tg64`, `tg64@d128`). A depth is the number of
    tokens already in the KV cache when the test starts: decoding after a 128-token prompt,
    as a chat does, is `tg64@d128`, a little slower than from an empty cache.
    `n_gpu_layers=None` keeps llama-bench's default (all layers on the GPU when the tools
    were built for CUDA).
    """
    model = check_gguf(model_path)
    threads = positive("n_threads", default_threads() if n_threads is None else n_threads)
    positive("n_prompt", n_prompt)
    positive("n_gen", n_gen)
    positive("reps", reps)
    if not n_depth or any(not isinstance(d, int) or d < 0 for d in n_depth):
        raise ValueError(f"n_depth={n_depth!r} must be a tuple of whole numbers >= 0, e.g. (0,).")
    cmd = [str(tool_path("llama-bench")), "-m", str(model), "-t", str(threads)]
    cmd += ["-p", str(n_prompt), "-n", str(n_gen), "-r", str(reps), "-o", "json"]
    cmd += ["-d", ",".join(map(str, n_depth))]
    if n_gpu_layers is not None:
        cmd += ["-ngl", str(n_gpu_layers)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(
            f"llama-bench failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}"
        )
    return parse_bench_json(proc.stdout)


def parse_bench_json(text: str) -> pd.DataFrame:
    """llama-bench `-o json` output -> one row per test with finite tokens/s figures."""
    rows = []
    for run in json.loads(text):
        pp, tg, depth = run["n_prompt"], run["n_gen"], run.get("n_depth", 0)
        test = f"pp{pp}" if not tg else f"tg{tg}" if not pp else f"pp{pp}+tg{tg}"
        rows.append(
            {
                "test": test + (f"@d{depth}" if depth else ""),
                "n_prompt": pp,
                "n_gen": tg,
                "n_depth": depth,
                "n_threads": run["n_threads"],
                "tokens_per_s": run["avg_ts"],
                "tokens_per_s_std": run["stddev_ts"],
                "reps": len(run.get("samples_ts", [])),
                "backend": run["backends"],
                "n_gpu_layers": run["n_gpu_layers"],
                "model": run["model_type"],
            }
        )
    if not rows:
        raise RuntimeError(f"llama-bench printed no results: {text[:500]!r}")
    table = pd.DataFrame(rows)
    figures = table[["tokens_per_s", "tokens_per_s_std"]].to_numpy(dtype=float).ravel()
    if not all(math.isfinite(x) for x in figures) or (table["tokens_per_s"] <= 0).any():
        raise RuntimeError(f"llama-bench gave non-finite or zero figures:\n{table}")
    return table


def phase_tps(table: pd.DataFrame) -> dict[str, float]:
    """What a chat call does, from one llama_bench() table: tokens/s of prefill from an empty
    cache ("prompt") and of decoding right after that prompt ("generated", at depth n_prompt).

    Run llama_bench(..., n_depth=(0, n_prompt)) to get both rows.
    """
    prompt = table[(table["n_gen"] == 0) & (table["n_depth"] == 0)]
    depth = int(prompt["n_prompt"].iloc[0]) if len(prompt) else -1
    generated = table[(table["n_prompt"] == 0) & (table["n_depth"] == depth)]
    if prompt.empty or generated.empty:
        raise ValueError(
            f"llama-bench table {list(table['test'])} lacks a prefill test at depth 0 or a "
            f"decode test right after it; run llama_bench(..., n_depth=(0, n_prompt))."
        )
    return {
        "prompt": float(prompt["tokens_per_s"].iloc[0]),
        "generated": float(generated["tokens_per_s"].iloc[0]),
    }


def versus_library(table: pd.DataFrame, prompt_tps: float, generated_tps: float) -> pd.DataFrame:
    """The library's tokens/s beside llama-bench's; ratio 1.0 = the library costs nothing."""
    raw = phase_tps(table)
    return pd.DataFrame(
        {
            "library": [prompt_tps, generated_tps],
            "llama-bench": [raw["prompt"], raw["generated"]],
        },
        index=["prompt tokens/s", "generated tokens/s"],
    ).assign(ratio=lambda d: d["library"] / d["llama-bench"])


class LlamaServer(ServerProcess):
    """llama-server on 127.0.0.1 with `n_parallel` slots, as a context manager.

    `n_ctx` is the context of ONE sequence: the server gets n_ctx * n_parallel, which it
    splits evenly over its slots. `chat_template` is a Jinja template (the library's
    GEMMA_TEMPLATE for the tiny base model, which carries none; None = the model's own).

        with LlamaServer(path, n_parallel=4, chat_template=GEMMA_TEMPLATE) as server:
            server.client().chat.completions.create(model=server.model, messages=...)
    """

    name = "llama-server"
    ready_path = "/health"

    def __init__(
        self,
        model_path: str | Path,
        n_parallel: int = 1,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        chat_template: str | None = None,
        n_gpu_layers: int | None = None,
        startup_timeout_s: float = 120,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        super().__init__(model_path, n_ctx, n_threads, startup_timeout_s=startup_timeout_s)
        self.n_parallel = positive("n_parallel", n_parallel)
        self.chat_template = chat_template
        self.n_gpu_layers = n_gpu_layers
        self.extra_args = tuple(extra_args)

    @classmethod
    def for_session(cls, session: Any, role: str = "chat", **kwargs: Any) -> LlamaServer:
        """A server for the profile's GGUF in `role`, with the course's Gemma turns if needed."""
        path, gemma = session.llamacpp_model(role, "llama-server needs a GGUF model.")
        if gemma:
            kwargs.setdefault("chat_template", GEMMA_TEMPLATE)
        return cls(path, **kwargs)

    @property
    def model(self) -> str:
        """The model name the server answers to (its file name)."""
        return self.model_path.name

    def command(self) -> list[str]:
        cmd = [str(tool_path("llama-server")), "-m", str(self.model_path)]
        cmd += ["--host", HOST, "--port", str(self.port), "-a", self.model]
        cmd += ["-np", str(self.n_parallel), "-c", str(self.n_ctx * self.n_parallel)]
        cmd += ["-t", str(self.n_threads)]
        if self.n_gpu_layers is not None:
            cmd += ["-ngl", str(self.n_gpu_layers)]
        if self.chat_template is not None:
            cmd += ["--jinja", "--chat-template-file", str(self._file("template.jinja"))]
        return cmd + list(self.extra_args)

    def _write_files(self) -> None:
        if self.chat_template is not None:
            self._file("template.jinja").write_text(self.chat_template, encoding="utf-8")

    def get_json(self, path: str) -> Any:
        """GET a llama-server endpoint such as /props or /slots, decoded."""
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def post_json(self, path: str, body: dict[str, Any]) -> Any:
        """POST JSON to a llama-server endpoint such as /apply-template, decoded."""
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())


def load_test(
    session: Any,
    users: tuple[int, ...] = (1, 2, 4, 8),
    requests_per_user: int = 2,
    max_tokens: int = 32,
    n_ctx: int = 1024,
    n_threads: int | None = None,
    timeout_s: float = 120.0,
) -> pd.DataFrame:
    """loadtest.run against llama-server with N parallel slots for N users.

    One server per N, each started with `-np N`, so N requests are decoded together in
    one batch (continuous batching); every server is stopped before the next starts.
    """
    from . import loadtest
    from .server import connect

    rows = []
    for n in users:
        with LlamaServer.for_session(
            session, n_parallel=n, n_ctx=n_ctx, n_threads=n_threads
        ) as srv:
            summary, _ = loadtest.run(
                connect(srv.base_url),
                users=(n,),
                requests_per_user=requests_per_user,
                max_tokens=max_tokens,
                timeout_s=timeout_s,
            )
            rows.append(summary)
    return pd.concat(rows)
