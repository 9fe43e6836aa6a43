"""The two local llama.cpp servers of the course, each an OpenAI-compatible HTTP server.

`LocalServer` is `python -m llama_cpp.server` (llama-cpp-python: one request at a time);
`LlamaServer` is llama.cpp's own `llama-server` with parallel slots (continuous batching).
Both take the model's turn format from its catalog record when its GGUF carries none.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

from .catalog import TurnFormat
from .process import HOST, ServerProcess, positive
from .tools import tool_path

# llama-cpp-python's "hf-tokenizer-config" chat format does not pass add_generation_prompt;
# it appends an empty assistant turn instead. This prefix turns that convention back into
# add_generation_prompt, so the server renders exactly what LlamaCppModel renders in-process.
_EMPTY_ASSISTANT_TO_GENERATION_PROMPT = (
    "{% if messages and messages[-1]['role'] == 'assistant' and not messages[-1]['content'] %}"
    "{% set messages = messages[:-1] %}{% set add_generation_prompt = true %}{% endif %}"
)


def tokenizer_config(turns: TurnFormat) -> dict[str, str]:
    """A turn format as the tokenizer_config.json that llama_cpp.server reads."""
    return {
        "chat_template": _EMPTY_ASSISTANT_TO_GENERATION_PROMPT + turns.template,
        "bos_token": turns.bos,
        "eos_token": turns.stop,
    }


class LocalServer(ServerProcess):
    """`python -m llama_cpp.server`: llama-cpp-python's server, one request at a time."""

    name = "llama_cpp.server"
    ready_path = "/v1/models"

    def __init__(
        self,
        model_path: str | Path,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        turns: TurnFormat | None = None,
        port: int | None = None,
        startup_timeout_s: float = 120.0,
    ) -> None:
        super().__init__(model_path, n_ctx, n_threads, port, startup_timeout_s)
        self.turns = turns  # None: the chat template inside the GGUF

    def command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.model_path),
            "--host", HOST,
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.n_threads),
            "--n_threads_batch", str(self.n_threads),
            # By default a new request cuts off the stream being generated; a load test
            # must see requests queue instead.
            "--interrupt_requests", "False",
        ]  # fmt: skip
        if self.turns is not None:
            cmd += ["--chat_format", "hf-tokenizer-config"]
            cmd += ["--hf_tokenizer_config_path", str(self._file("tokenizer_config.json"))]
        return cmd

    def _write_files(self) -> None:
        if self.turns is not None:
            config = json.dumps(tokenizer_config(self.turns))
            self._file("tokenizer_config.json").write_text(config, encoding="utf-8")


class LlamaServer(ServerProcess):
    """llama-server on 127.0.0.1 with `n_parallel` slots, as a context manager.

    `n_ctx` is the context of ONE sequence: the server gets n_ctx * n_parallel, which it
    splits evenly over its slots. `turns`: the chat template for a GGUF that carries none
    (a catalog record's `turns`); None = the model's own.

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
        turns: TurnFormat | None = None,
        n_gpu_layers: int | None = None,
        startup_timeout_s: float = 120,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        super().__init__(model_path, n_ctx, n_threads, startup_timeout_s=startup_timeout_s)
        self.n_parallel = positive("n_parallel", n_parallel)
        self.turns = turns
        self.n_gpu_layers = n_gpu_layers
        self.extra_args = tuple(extra_args)

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
        if self.turns is not None:
            cmd += ["--jinja", "--chat-template-file", str(self._file("template.jinja"))]
        return cmd + list(self.extra_args)

    def _write_files(self) -> None:
        if self.turns is not None:
            self._file("template.jinja").write_text(self.turns.template, encoding="utf-8")

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
