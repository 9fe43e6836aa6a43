"""The two local llama.cpp servers of the course, each an OpenAI-compatible HTTP server.

`LocalServer` is `python -m llama_cpp.server` (llama-cpp-python: one request at a time);
`LlamaServer` is llama.cpp's own `llama-server` with parallel slots (continuous batching).
Both render prompts with the chat template inside the GGUF.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

from ..core.errors import InputError, whole
from ..planning.provision import verify_gguf
from ..planning.tools import tool_path
from .llamacpp import default_gpu_layers
from .process import HOST, ServerProcess, python_server_threads


def gpu_layers(n_gpu_layers: int | None) -> int:
    """Layers to offload: None for the course's default (all where a GPU can take them),
    -1 for all, 0 for none, or a count."""
    if n_gpu_layers is None:
        return default_gpu_layers()
    return whole("n_gpu_layers", n_gpu_layers, minimum=-1)


class LocalServer(ServerProcess):
    """`python -m llama_cpp.server`: llama-cpp-python's server, one request at a time."""

    name = "llama_cpp.server"
    ready_path = "/v1/models"
    threads_default = staticmethod(python_server_threads)  # its HTTP side is Python

    def __init__(
        self,
        model_path: str | Path,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_gpu_layers: int | None = None,
        port: int | None = None,
        startup_timeout_s: float = 120.0,
        n_threads_batch: int | None = None,
    ) -> None:
        model_path = verify_gguf(model_path)  # the checks the in-process engine runs
        super().__init__(model_path, n_ctx, n_threads, port, startup_timeout_s, n_threads_batch)
        self.n_gpu_layers = gpu_layers(n_gpu_layers)

    def command(self) -> list[str]:
        cmd = [
            # llama_cpp.server with message contents tokenized as plain text
            sys.executable, "-m", "llmops_lib.commands.llama_cpp_server",
            "--model", str(self.model_path),
            "--host", HOST,
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.n_threads),
            "--n_threads_batch", str(self.n_threads_batch),
            "--n_gpu_layers", str(self.n_gpu_layers),
            # By default a new request cuts off the stream being generated; a load test
            # must see requests queue instead.
            "--interrupt_requests", "False",
        ]  # fmt: skip
        return cmd


class LlamaServer(ServerProcess):
    """llama-server on 127.0.0.1 with `n_parallel` slots, as a context manager.

    `n_ctx` is the context of ONE sequence: the server gets n_ctx * n_parallel, which it
    splits evenly over its slots. Threads: `n_threads` decode one sequence, `n_threads_batch`
    run the batched steps (prompts, and the slots decoding together); both default to every
    idle core (hardware.default_threads).
    `--jinja`: the GGUF's own chat template, rendered like llama-cpp-python renders it
    in-process.

        with LlamaServer(path, n_parallel=4) as server:
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
        n_gpu_layers: int | None = None,
        startup_timeout_s: float = 120,
        extra_args: tuple[str, ...] = (),
        n_threads_batch: int | None = None,
    ) -> None:
        model_path = verify_gguf(model_path)  # the checks the in-process engine runs
        super().__init__(
            model_path,
            n_ctx,
            n_threads,
            startup_timeout_s=startup_timeout_s,
            n_threads_batch=n_threads_batch,
        )
        self.n_parallel = whole("n_parallel", n_parallel)
        self.n_gpu_layers = gpu_layers(n_gpu_layers)
        if isinstance(extra_args, str) or not all(isinstance(a, str) for a in extra_args):
            # a bare string would be passed on letter by letter: "--metrics" as "-", "-", "m"...
            raise InputError(
                f"extra_args={extra_args!r}: needs a tuple of strings, e.g. ('--metrics',)."
            )
        self.extra_args = tuple(extra_args)

    @property
    def model(self) -> str:
        """The model name the server answers to (its file name)."""
        return self.model_path.name

    def command(self) -> list[str]:
        cmd = [str(tool_path("llama-server")), "-m", str(self.model_path)]
        cmd += ["--host", HOST, "--port", str(self.port), "-a", self.model]
        cmd += ["-np", str(self.n_parallel), "-c", str(self.n_ctx * self.n_parallel)]
        cmd += ["-t", str(self.n_threads), "-tb", str(self.n_threads_batch)]
        cmd += ["-ngl", str(self.n_gpu_layers)]
        cmd += ["--jinja"]
        return cmd + list(self.extra_args)

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
