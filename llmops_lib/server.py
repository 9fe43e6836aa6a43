"""A local OpenAI-compatible server (llama.cpp) and a client for any such endpoint.

The client is the official `openai` package, so the same code talks to TGI's Messages
API, vLLM and llama-cpp-python's server: only the base URL changes. Setting
LLMOPS_ENDPOINT (e.g. http://gpu-box:8000/v1) points the notebooks at a real server;
without it they start `python -m llama_cpp.server` with the profile's GGUF on 127.0.0.1.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai

from .llamacpp import GEMMA_STOP, GEMMA_TEMPLATE, check_gguf, default_threads

ENDPOINT_ENV = "LLMOPS_ENDPOINT"
API_KEY_ENV = "LLMOPS_API_KEY"
HOST = "127.0.0.1"

# llama-cpp-python's "hf-tokenizer-config" chat format does not pass add_generation_prompt;
# it appends an empty assistant turn instead. This prefix turns that convention back into
# add_generation_prompt, so the server renders exactly what LlamaCppModel renders in-process.
_EMPTY_ASSISTANT_TO_GENERATION_PROMPT = (
    "{% if messages and messages[-1]['role'] == 'assistant' and not messages[-1]['content'] %}"
    "{% set messages = messages[:-1] %}{% set add_generation_prompt = true %}{% endif %}"
)
GEMMA_BOS = "<bos>"  # Gemma's BOS token text (tests check it against the model's vocabulary)


class EndpointError(RuntimeError):
    """An endpoint did not answer or refused a request; the message names the URL."""

    def __init__(self, message: str, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


def gemma_tokenizer_config() -> dict[str, str]:
    """The course's Gemma turn format as a tokenizer_config.json for llama_cpp.server."""
    return {
        "chat_template": _EMPTY_ASSISTANT_TO_GENERATION_PROMPT + GEMMA_TEMPLATE,
        "bos_token": GEMMA_BOS,
        "eos_token": GEMMA_STOP,
    }


def positive(name: str, value: int) -> int:
    """`value` when it is a whole number >= 1, else an error that names the argument."""
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive whole number.")
    return value


def free_port(host: str = HOST) -> int:
    """A TCP port that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(port: int, host: str = HOST) -> bool:
    """True when nothing listens on host:port (a stopped server must leave it so)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) != 0


class ServerProcess:
    """A model server as a child process on 127.0.0.1, used as a context manager.

    The process is stopped on exit from the `with` block, also when the block raises, and at
    interpreter exit as a last resort (a notebook kernel that is shut down mid-lesson).
    A subclass says how to start it (`command`, `_write_files`) and which path answers 200
    once the model is loaded (`ready_path`).
    """

    name: str  # the program, as error messages name it
    ready_path: str  # answers 200 once the model is loaded

    def __init__(
        self,
        model_path: str | Path,
        n_ctx: int,
        n_threads: int | None = None,
        port: int | None = None,
        startup_timeout_s: float = 120.0,
    ) -> None:
        self.model_path = check_gguf(model_path)
        # One core is left to the clients on the same machine (the notebook, a load test):
        # a llama.cpp thread that has to share its core stalls all the others at each step.
        self.n_ctx = positive("n_ctx", n_ctx)
        self.n_threads = positive("n_threads", n_threads or max(1, default_threads() - 1))
        self._auto_port = port is None
        self.port = port or free_port()
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI-compatible API root, for openai.OpenAI(base_url=...) or connect()."""
        return self.url + "/v1"

    @property
    def log_path(self) -> Path | None:
        return self._workdir / "server.log" if self._workdir else None

    def command(self) -> list[str]:
        """The exact command line, so it can be run by hand in a terminal too."""
        raise NotImplementedError

    def _write_files(self) -> None:
        """Write the files the command line names (see _file) before the process starts."""

    def _file(self, name: str) -> Path:
        if self._workdir is None:
            raise RuntimeError(f"{type(self).__name__}.command() needs start() first.")
        return self._workdir / name

    def start(self) -> ServerProcess:
        """Start the process and wait (bounded) until `ready_path` answers."""
        if self.process is not None:
            raise RuntimeError(f"{self.name} is already running at {self.url}.")
        if self._auto_port:
            self.port = free_port()
        elif not port_is_free(self.port):
            raise OSError(f"Port {self.port} on {HOST} is in use; pass port=None for a free one.")
        atexit.register(self.stop)
        try:
            self._workdir = Path(tempfile.mkdtemp(prefix="llmops-server-"))
            self._write_files()
            with self.log_path.open("wb") as log:
                self.process = subprocess.Popen(
                    self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with code {self.process.returncode} before it "
                    f"answered on {self.url}. Its log ends with:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet, or 503 while the model loads
            time.sleep(0.2)
        raise TimeoutError(
            f"{self.name} did not answer on {self.url}{self.ready_path} within "
            f"{self.startup_timeout_s:.0f} s. Its log ends with:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 25) -> str:
        """The end of the server's own log (stdout and stderr)."""
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def client(self, **kwargs: Any) -> openai.OpenAI:
        """An openai.OpenAI client for this server (no key needed on 127.0.0.1)."""
        kwargs.setdefault("timeout", 120)
        kwargs.setdefault("max_retries", 0)  # a failure shows at once, not after retries
        return openai.OpenAI(base_url=self.base_url, api_key="not-needed", **kwargs)

    def stop(self) -> None:
        """Terminate the process (kill it if it does not exit in 10 s) and remove temp files."""
        atexit.unregister(self.stop)
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=10)
            self.process = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LocalServer(ServerProcess):
    """`python -m llama_cpp.server`: llama-cpp-python's server, one request at a time."""

    name = "llama_cpp.server"
    ready_path = "/v1/models"

    def __init__(
        self,
        model_path: str | Path,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        tokenizer_config: dict[str, str] | None = None,
        port: int | None = None,
        startup_timeout_s: float = 120.0,
    ) -> None:
        super().__init__(model_path, n_ctx, n_threads, port, startup_timeout_s)
        self.tokenizer_config = tokenizer_config

    @classmethod
    def for_session(cls, session: Any, role: str = "chat", **kwargs: Any) -> LocalServer:
        """A server for the profile's model in `role` (its GGUF and, for Gemma, its turns)."""
        path, gemma = session.llamacpp_model(
            role,
            f"a local llama.cpp server needs a GGUF model. Serve it with TGI or vLLM and set "
            f"{ENDPOINT_ENV} to its URL (e.g. http://host:8000/v1).",
        )
        if gemma:
            kwargs.setdefault("tokenizer_config", gemma_tokenizer_config())
        return cls(path, **kwargs)

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
        if self.tokenizer_config is not None:
            cmd += ["--chat_format", "hf-tokenizer-config"]
            cmd += ["--hf_tokenizer_config_path", str(self._file("tokenizer_config.json"))]
        return cmd

    def _write_files(self) -> None:
        if self.tokenizer_config is not None:
            config = json.dumps(self.tokenizer_config)
            self._file("tokenizer_config.json").write_text(config, encoding="utf-8")


@dataclass(frozen=True)
class Reply:
    """One streamed answer and its timing, as a user of the endpoint experiences it."""

    text: str
    ttft_s: float  # request sent -> first generated text arrives
    total_s: float  # request sent -> stream ends
    completion_tokens: int  # the server's usage count when it sends one, else text chunks


class Endpoint:
    """Chat with any OpenAI-compatible server through the official `openai` client."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        # Local servers ignore the key but the client insists on one.
        key = api_key or os.environ.get(API_KEY_ENV) or "not-needed"
        # No retries: a failure should surface at once with the URL, and retries would
        # distort the load-test figures.
        self.client = openai.OpenAI(
            base_url=self.base_url, api_key=key, timeout=timeout_s, max_retries=0
        )
        self.model = model
        self.local: LocalServer | None = None  # set when endpoint() started the server

    def check(self, timeout_s: float = 10.0) -> str:
        """Ask /models (bounded); return the served model id; raise EndpointError if none."""
        with self._readable_errors(timeout_s):
            models = self.client.models.list(timeout=timeout_s).data
        if not models:
            raise EndpointError(f"{self.base_url} serves no model.", self.base_url)
        if self.model is None:
            self.model = models[0].id
        return self.model

    @contextmanager
    def _readable_errors(self, timeout_s: float | None = None) -> Iterator[None]:
        """Turn the client's exceptions into one-line errors that name the URL and a fix."""
        try:
            yield
        except openai.APITimeoutError:
            limit = timeout_s or self.timeout_s
            raise EndpointError(
                f"No answer from {self.base_url} within {limit:.0f} s. Is the server up and "
                f"not overloaded? Check the URL ({ENDPOINT_ENV}) or raise the timeout.",
                self.base_url,
            ) from None
        except openai.APIConnectionError as err:
            cause = err.__cause__ or err
            raise EndpointError(
                f"Cannot connect to {self.base_url} ({type(cause).__name__}: {cause}). "
                f"Start the server, or set {ENDPOINT_ENV} to the URL of a running one.",
                self.base_url,
            ) from None
        except openai.APIStatusError as err:
            raise EndpointError(
                f"{self.base_url} refused the request: HTTP {err.status_code}: "
                f"{_error_message(err)}",
                self.base_url,
                status=err.status_code,
            ) from None

    def _create(self, messages: list[dict[str, str]], **kwargs: Any) -> Any:
        if self.model is None:
            self.check()
        return self.client.chat.completions.create(model=self.model, messages=messages, **kwargs)

    def chat(
        self, messages: list[dict[str, str]], max_tokens: int = 64, temperature: float = 0.0
    ) -> str:
        """The answer text of one non-streamed chat completion."""
        with self._readable_errors():
            response = self._create(messages, max_tokens=max_tokens, temperature=temperature)
        return response.choices[0].message.content or ""

    def stream(
        self, messages: list[dict[str, str]], max_tokens: int = 64, temperature: float = 0.0
    ) -> Iterator[str]:
        """The answer as it is generated, piece by piece (server-sent events)."""
        for piece, _usage in self._stream_events(messages, max_tokens, temperature):
            if piece:
                yield piece

    def _stream_events(
        self,
        messages: list[dict[str, str]],
        max_tokens: int,
        temperature: float,
        timeout_s: float | None = None,
    ) -> Iterator[tuple[str, int | None]]:
        extra = {"timeout": timeout_s} if timeout_s else {}
        with self._readable_errors(timeout_s):
            chunks = self._create(
                messages,
                max_tokens=max_tokens,
                temperature=temperature,
                stream=True,
                # vLLM and TGI then send the token count; llama.cpp ignores it.
                stream_options={"include_usage": True},
                **extra,
            )
            with chunks:
                for chunk in chunks:
                    usage = chunk.usage.completion_tokens if chunk.usage else None
                    piece = chunk.choices[0].delta.content if chunk.choices else None
                    yield piece or "", usage

    def timed_chat(
        self,
        messages: list[dict[str, str]],
        max_tokens: int = 64,
        temperature: float = 0.0,
        timeout_s: float | None = None,
    ) -> Reply:
        """Stream one answer and time it: time to first token and total latency."""
        start = time.perf_counter()
        ttft = None
        pieces: list[str] = []
        usage_tokens = None
        for piece, usage in self._stream_events(messages, max_tokens, temperature, timeout_s):
            if piece:
                if ttft is None:
                    ttft = time.perf_counter() - start
                pieces.append(piece)
            if usage is not None:
                usage_tokens = usage
        total = time.perf_counter() - start
        return Reply(
            text="".join(pieces),
            ttft_s=ttft if ttft is not None else float("nan"),
            total_s=total,
            # llama.cpp, vLLM and TGI stream one token per chunk, so chunks count tokens
            # where the server sends no usage.
            completion_tokens=usage_tokens if usage_tokens is not None else len(pieces),
        )


def _error_message(err: openai.APIStatusError) -> str:
    """The server's own message from an error body (OpenAI, FastAPI or plain text)."""
    body = err.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
        if "detail" in body:
            return str(body["detail"])
    return err.message


def connect(base_url: str, api_key: str | None = None, timeout_s: float = 10.0) -> Endpoint:
    """An Endpoint that has answered /models within `timeout_s` (else EndpointError)."""
    endpoint = Endpoint(base_url, api_key=api_key)
    endpoint.check(timeout_s)
    return endpoint


@contextmanager
def endpoint(session: Any, n_ctx: int = 2048, role: str = "chat") -> Iterator[Endpoint]:
    """LLMOPS_ENDPOINT if set, else a local llama.cpp server with the profile's model.

    Whatever was started is stopped when the block ends, also when it raises.
    """
    url = os.environ.get(ENDPOINT_ENV)
    if url:
        yield connect(url)
        return
    with LocalServer.for_session(session, role=role, n_ctx=n_ctx) as local:
        ep = connect(local.base_url)
        ep.local = local
        yield ep
