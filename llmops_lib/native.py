"""llama.cpp's own tools, built from the pinned llama-cpp-python source: bench and server.

Why: llama-cpp-python wraps the engine for one caller at a time. `llama-bench` measures the
raw engine (a baseline to hold the library's own figures against), and `llama-server` runs
parallel slots with continuous batching, which is what serves many users on one machine.
`scripts/build_llama_tools.sh` (called by `make setup`) builds them into a cache outside
the work tree, keyed by the installed llama-cpp-python version, and lists them in
tools.json; this module only finds and runs them.
"""

from __future__ import annotations

import atexit
import json
import math
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pandas as pd

from .llamacpp import GEMMA_TEMPLATE, check_gguf, default_threads
from .provision import cache_dir
from .server import HOST, free_port

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


def _positive(name: str, value: int) -> int:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive whole number.")
    return value


def llama_bench(
    model_path: str | Path,
    n_threads: int | None = None,
    n_prompt: int = 128,
    n_gen: int = 64,
    reps: int = 3,
    n_gpu_layers: int | None = None,
    timeout_s: float = 600,
) -> pd.DataFrame:
    """Run llama-bench: prefill (pp) and decode (tg) tokens/s, mean and std over `reps`.

    One row per test (`pp<n_prompt>`, `tg<n_gen>`). `n_gpu_layers=None` keeps llama-bench's
    default (all layers on the GPU when the tools were built for CUDA).
    """
    model = check_gguf(model_path)
    threads = _positive("n_threads", default_threads() if n_threads is None else n_threads)
    _positive("n_prompt", n_prompt)
    _positive("n_gen", n_gen)
    _positive("reps", reps)
    cmd = [str(tool_path("llama-bench")), "-m", str(model), "-t", str(threads)]
    cmd += ["-p", str(n_prompt), "-n", str(n_gen), "-r", str(reps), "-o", "json"]
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
        pp, tg = run["n_prompt"], run["n_gen"]
        rows.append(
            {
                "test": f"pp{pp}" if not tg else f"tg{tg}" if not pp else f"pp{pp}+tg{tg}",
                "n_prompt": run["n_prompt"],
                "n_gen": run["n_gen"],
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


class LlamaServer:
    """llama-server on 127.0.0.1 with `n_parallel` slots, as a context manager.

    `n_ctx` is the context of ONE sequence: the server gets n_ctx * n_parallel, which it
    splits evenly over its slots. `chat_template` is a Jinja template (the library's
    GEMMA_TEMPLATE for the tiny base model, which carries none; None = the model's own).
    The server is always stopped on exit, also when the body raised.

        with LlamaServer(path, n_parallel=4, chat_template=GEMMA_TEMPLATE) as server:
            server.client().chat.completions.create(model=server.model, messages=...)
    """

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
        self.model_path = check_gguf(model_path)
        self.n_parallel = _positive("n_parallel", n_parallel)
        self.n_ctx = _positive("n_ctx", n_ctx)
        self.n_threads = _positive(
            "n_threads", default_threads() if n_threads is None else n_threads
        )
        self.chat_template = chat_template
        self.n_gpu_layers = n_gpu_layers
        self.startup_timeout_s = startup_timeout_s
        self.extra_args = tuple(extra_args)
        self.host = HOST
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    @classmethod
    def for_session(cls, session: Any, role: str = "chat", **kwargs: Any) -> LlamaServer:
        """A server for the profile's GGUF in `role`, with the course's Gemma turns if needed."""
        choice = session.choice(role)
        if choice.backend != "llamacpp":
            raise ValueError(
                f"The {role!r} role of profile {session.profile.name!r} runs {choice.model} on "
                f"{choice.backend}; llama-server needs a GGUF model (a llama.cpp role)."
            )
        if choice.spec.turn_format == "gemma":
            kwargs.setdefault("chat_template", GEMMA_TEMPLATE)
        return cls(session.gguf_path(role), **kwargs)

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("LlamaServer is not running; use it as `with LlamaServer(...)`.")
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI-compatible API root, for openai.OpenAI(base_url=...)."""
        return self.url + "/v1"

    @property
    def model(self) -> str:
        """The model name the server answers to (its file name)."""
        return self.model_path.name

    def command(self) -> list[str]:
        """The exact llama-server command line (shown in notebooks, run by start())."""
        cmd = [str(tool_path("llama-server")), "-m", str(self.model_path)]
        cmd += ["--host", self.host, "--port", str(self.port), "-a", self.model]
        cmd += ["-np", str(self.n_parallel), "-c", str(self.n_ctx * self.n_parallel)]
        cmd += ["-t", str(self.n_threads)]
        if self.n_gpu_layers is not None:
            cmd += ["-ngl", str(self.n_gpu_layers)]
        if self.chat_template is not None:
            cmd += ["--jinja", "--chat-template-file", str(Path(self._tmp.name) / "template.jinja")]
        return cmd + list(self.extra_args)

    def start(self) -> LlamaServer:
        """Launch and wait (bounded) until /health says the model is loaded."""
        if self.process is not None:
            raise RuntimeError(f"llama-server is already running at {self.url}.")
        self._tmp = tempfile.TemporaryDirectory(prefix="llama-server-")
        tmp = Path(self._tmp.name)
        if self.chat_template is not None:
            (tmp / "template.jinja").write_text(self.chat_template)
        self.port = free_port(self.host)
        self.log_path = tmp / "server.log"
        atexit.register(self.stop)  # last resort: a notebook kernel shut down mid-lesson
        try:
            with self.log_path.open("wb") as log:
                self.process = subprocess.Popen(
                    self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"llama-server exited with code {self.process.returncode} while starting:\n"
                    f"{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet, or 503 while the model loads
            time.sleep(0.2)
        raise TimeoutError(
            f"llama-server did not report healthy within {self.startup_timeout_s:.0f} s:\n"
            f"{self.log_tail()}"
        )

    def log_tail(self, n_chars: int = 3000) -> str:
        """The end of the server's own log (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except (AttributeError, FileNotFoundError):
            return ""

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

    def client(self, **kwargs: Any):
        """An openai.OpenAI client for this server (no key needed on 127.0.0.1)."""
        from openai import OpenAI

        kwargs.setdefault("timeout", 120)
        kwargs.setdefault("max_retries", 0)  # a failure shows at once, not after retries
        return OpenAI(base_url=self.base_url, api_key="no-key-needed", **kwargs)

    def stop(self, timeout_s: float = 10) -> None:
        """Terminate the server (kill if it does not stop) and remove its temporary files."""
        atexit.unregister(self.stop)
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=timeout_s)
            self.process = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
