"""Chat with any OpenAI-compatible server (TGI, vLLM, llama.cpp) through the `openai` client.

Only the base URL changes between servers. Setting LLMOPS_ENDPOINT (e.g.
http://gpu-box:8000/v1) points the notebooks at a real server; without it
`session.endpoint()` starts `python -m llama_cpp.server` with the profile's GGUF.
An `Endpoint` meets the course's chat contract (backend.ChatBackend), so a lesson that
runs on an in-process model runs on a server too.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import openai

from ..core.backend import NO_TIMINGS, Message, Timings, check_chat_args, chunk_text
from ..core.errors import EndpointError, InputError, positive

ENDPOINT_ENV = "LLMOPS_ENDPOINT"
EXAMPLE = "http://127.0.0.1:8000/v1"
API_KEY_ENV = "LLMOPS_API_KEY"


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
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise InputError(f"base_url={base_url!r}: needs an http:// address, e.g. {EXAMPLE}.")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = positive("timeout_s", timeout_s)
        # Local servers ignore the key but the client insists on one.
        key = api_key or os.environ.get(API_KEY_ENV) or "not-needed"
        # The sockets of this endpoint's connections, so hang_up() can reach them.
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._sockets_lock = threading.Lock()
        http = openai.DefaultHttpxClient(event_hooks={"request": [self._trace_connections]})
        # No retries: a failure should surface at once with the URL, and retries would
        # distort the load-test figures.
        self.client = openai.OpenAI(
            base_url=self.base_url, api_key=key, timeout=timeout_s, max_retries=0, http_client=http
        )
        self.model = model
        self.server: Any = None  # the local server process behind the URL, if we started it
        self._timings = NO_TIMINGS

    def _trace_connections(self, request: Any) -> None:
        """httpx request hook: have httpcore report each new connection (its `trace`
        extension), whose socket is then kept for hang_up()."""
        request.extensions.setdefault("trace", self._on_trace)

    def _on_trace(self, event: str, info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.complete" and info.get("return_value") is not None:
            sock = info["return_value"].get_extra_info("socket")
            if sock is not None:
                with self._sockets_lock:
                    self._sockets.add(sock)

    def hang_up(self) -> int:
        """End every request in flight on this endpoint now, from any thread (Ctrl-C in a
        load test): their sockets are shut down, so a thread blocked reading one gets an
        EndpointError at once instead of at its timeout, and the server sees its client
        gone. The endpoint stays usable (new requests open new connections). Returns how
        many connections were cut."""
        with self._sockets_lock:
            sockets = list(self._sockets)
            self._sockets.clear()
        for sock in sockets:
            _shut(sock)
        return len(sockets)

    def check(self, timeout_s: float = 10.0) -> str:
        """Ask /models (bounded); return the served model id; raise EndpointError if none."""
        positive("timeout_s", timeout_s)
        with self.readable_errors(timeout_s):
            models = self.client.models.list(timeout=timeout_s).data
        if not models:
            raise EndpointError(f"{self.base_url} serves no model.", self.base_url)
        if self.model is None:
            self.model = models[0].id
        return self.model

    @contextmanager
    def readable_errors(self, timeout_s: float | None = None) -> Iterator[None]:
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
            if "Connect" in type(cause).__name__:  # nothing listens there (httpx ConnectError)
                raise EndpointError(
                    f"Cannot connect to {self.base_url} ({type(cause).__name__}: {cause}). "
                    f"Start the server, or set {ENDPOINT_ENV} to the URL of a running one.",
                    self.base_url,
                ) from None
            raise EndpointError(
                f"The connection to {self.base_url} broke during the request "
                f"({type(cause).__name__}: {cause}): the server closed it or stopped. Retry; "
                "if it happens again, read the server's log.",
                self.base_url,
            ) from None
        except openai.APIStatusError as err:
            raise EndpointError(
                f"{self.base_url} refused the request: HTTP {err.status_code}: "
                f"{_error_message(err)}",
                self.base_url,
                status=err.status_code,
            ) from None

    def _create(self, messages: list[Message], **kwargs: Any) -> Any:
        if self.model is None:
            self.check()
        return self.client.chat.completions.create(model=self.model, messages=messages, **kwargs)

    def chat(
        self,
        messages: list[Message],
        max_tokens: int = 256,
        temperature: float = 0.0,
        stream: bool = False,
        timeout_s: float | None = None,
        response_format: dict[str, Any] | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """An OpenAI-style chat completion as a dict (chunks when streaming), like the
        in-process engines; timings() then holds the server's token counts and the times.

        `response_format` is passed to the server as it is (structured.response_format()
        writes one for a JSON schema); `extra_body`: fields of the server's own (llama-server's
        `cache_prompt`, `grammar`).
        """
        check_chat_args(messages, max_tokens, temperature)
        if timeout_s is not None:
            positive("timeout_s", timeout_s)
        extra = _options(timeout_s, response_format, extra_body)
        if stream:
            return self._stream(messages, max_tokens, temperature, timeout_s, extra)
        start = time.perf_counter()
        with self.readable_errors(timeout_s):
            response = self._create(
                messages, max_tokens=max_tokens, temperature=temperature, **extra
            ).model_dump()
        self._timings = server_timings(response, time.perf_counter() - start)
        return response

    def complete(
        self,
        prompt: str | list[int],
        max_tokens: int = 32,
        extra_body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A greedy completion of a finished prompt (text, or token ids) from /completions,
        as a dict; timings() then holds its counts and times."""
        if self.model is None:
            self.check()
        start = time.perf_counter()
        with self.readable_errors():
            response = self.client.completions.create(
                model=self.model,
                prompt=prompt,
                max_tokens=max_tokens,
                temperature=0.0,
                **_options(None, None, extra_body),
            ).model_dump()
        self._timings = server_timings(response, time.perf_counter() - start)
        return response

    def _stream(
        self,
        messages: list[Message],
        max_tokens: int,
        temperature: float,
        timeout_s: float | None,
        extra: dict[str, Any],
    ) -> Iterator[dict[str, Any]]:
        out: list[Timings] = []
        yield from self._events(messages, max_tokens, temperature, timeout_s, out, extra)
        self._timings = out[0]

    def _events(
        self,
        messages: list[Message],
        max_tokens: int,
        temperature: float,
        timeout_s: float | None,
        out: list[Timings],
        extra: dict[str, Any],
    ) -> Iterator[dict[str, Any]]:
        """Chunks as the server sends them (server-sent events); appends their Timings to
        `out` at the end (a list, not self: load-test users share one Endpoint)."""
        start = time.perf_counter()
        first = None
        pieces = 0
        usage: dict[str, Any] = {}
        with self.readable_errors(timeout_s):
            chunks = self._create(
                messages,
                max_tokens=max_tokens,
                temperature=temperature,
                stream=True,
                # vLLM and TGI then send the token counts; llama.cpp ignores it.
                stream_options={"include_usage": True},
                **extra,
            )
            answered = False
            with chunks:
                for chunk in chunks:
                    data = chunk.model_dump()
                    usage = data.get("usage") or usage
                    if chunk_text(data):
                        first = first or time.perf_counter()
                        pieces += 1
                    if data.get("choices"):
                        answered = True
                        yield data
                if not answered:
                    # llama_cpp.server closes this connection right after such a stream; a
                    # next request that reused it would fail with "connection reset".
                    _drop_connection(chunks.response)
        if not answered:  # llama_cpp.server's answer to a prompt over its context
            raise EndpointError(
                f"{self.base_url} ended the stream without an answer (HTTP 200, no chunks); "
                "a prompt longer than the server's context does this. Shorten the messages, "
                "or send them without stream=True to see the server's own error.",
                self.base_url,
            )
        end = time.perf_counter()
        out.append(
            Timings(
                usage.get("prompt_tokens") or 0,
                1000 * ((first or end) - start),  # time to first token: queue + prefill + HTTP
                # llama.cpp, vLLM and TGI stream one token per chunk, so chunks count tokens
                # where the server sends no usage.
                usage.get("completion_tokens") or pieces,
                1000 * (end - (first or end)),
            )
        )

    def timings(self) -> Timings:
        """The last chat() call: the server's token counts and the client's stopwatch."""
        return self._timings

    def close(self) -> None:
        """Close the HTTP connections (a server we started is stopped by its `with`)."""
        self.client.close()

    def timed_chat(
        self,
        messages: list[Message],
        max_tokens: int = 64,
        temperature: float = 0.0,
        timeout_s: float | None = None,
    ) -> Reply:
        """Stream one answer and time it as its user experiences it."""
        check_chat_args(messages, max_tokens, temperature)
        if timeout_s is not None:
            positive("timeout_s", timeout_s)
        out: list[Timings] = []
        events = self._events(
            messages, max_tokens, temperature, timeout_s, out, _options(timeout_s, None, None)
        )
        text = "".join(chunk_text(chunk) for chunk in events)
        t = out[0]
        return Reply(
            text=text,
            ttft_s=t.prompt_ms / 1000 if text else float("nan"),
            total_s=(t.prompt_ms + t.generated_ms) / 1000,
            completion_tokens=t.generated_tokens,
        )


def _options(
    timeout_s: float | None,
    response_format: dict[str, Any] | None,
    extra_body: dict[str, Any] | None,
) -> dict[str, Any]:
    """The optional arguments of one request, only those given."""
    extra: dict[str, Any] = {"timeout": timeout_s} if timeout_s else {}
    if response_format is not None:
        extra["response_format"] = response_format
    if extra_body:
        extra["extra_body"] = extra_body
    return extra


def server_timings(response: dict[str, Any], elapsed_s: float) -> Timings:
    """What one non-streamed answer cost: llama-server's own counters where it sends them
    (its `timings` field), else the usage counts and the client's stopwatch, in which
    prefill and decode cannot be told apart."""
    own = response.get("timings")
    if own:
        return Timings(own["prompt_n"], own["prompt_ms"], own["predicted_n"], own["predicted_ms"])
    usage = response.get("usage") or {}
    return Timings(
        usage.get("prompt_tokens") or 0,
        0.0,
        usage.get("completion_tokens") or 0,
        1000 * elapsed_s,
    )


def _shut(sock: socket.socket) -> None:
    """Shut a socket down both ways: a thread blocked reading it returns at once (close()
    alone would leave it blocked until its timeout) and the connection is never reused."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed or not connected
        pass


def _drop_connection(response: Any) -> None:
    """Keep the connection that carried `response` out of the client's pool."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is not None:
        _shut(sock)


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


def connect(
    base_url: str, api_key: str | None = None, timeout_s: float = 10.0, server: Any = None
) -> Endpoint:
    """An Endpoint that has answered /models within `timeout_s` (else EndpointError).

    `server`: the local server process behind the URL, kept on the endpoint as `.server`.
    """
    endpoint = Endpoint(base_url, api_key=api_key)
    endpoint.check(timeout_s)
    endpoint.server = server
    return endpoint
