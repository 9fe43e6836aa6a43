"""The completion service: validation and the queue on a fake model (milliseconds), then the
real service process with the tiny model over real HTTP (uvicorn on 127.0.0.1).

The HTTP tests take the service's address from a fixture, so `scripts/test_image.sh` runs
the same tests against the container (LLMOPS_SERVICE_URL).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import anyio
import httpx
import openai
import pytest
from fakes import FakeChat, echo
from fastapi.testclient import TestClient

from llmops_lib.commands import service
from llmops_lib.core import results
from llmops_lib.core.errors import InputError
from llmops_lib.engines.process import HOST, free_port, port_is_free
from llmops_lib.lessons import metrics
from llmops_lib.lessons.nb10 import bursts

SERVICE_URL_ENV = "LLMOPS_SERVICE_URL"  # a running service (the container) to test instead
FAKE_CTX = 256
HELLO = [{"role": "user", "content": "What is the capital of France?"}]
LONG_STORY = [{"role": "user", "content": "Count from 1 to 500, separated by commas."}]

# Every bad request the service must refuse with a 4xx JSON error naming the field.
BAD_CHAT = {
    "no messages": ({"messages": []}, "messages"),
    "messages not a list": ({"messages": "hello"}, "messages"),
    "empty prompt": ({"messages": [{"role": "user", "content": ""}]}, "messages.0.content"),
    "blank prompt": ({"messages": [{"role": "user", "content": "  \n"}]}, "messages.0.content"),
    "oversized prompt": (
        {"messages": [{"role": "user", "content": "x" * (service.MAX_PROMPT_CHARS + 1)}]},
        "messages.0.content",
    ),
    "oversized in sum": (
        {"messages": [{"role": "user", "content": "x" * (service.MAX_PROMPT_CHARS // 2 + 1)}] * 2},
        "messages",
    ),
    "unknown role": ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
    "content not text": ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    "unknown message field": (
        {"messages": [{"role": "user", "content": "hi", "name": "x"}]},
        "messages.0.name",
    ),
    "unknown field": ({"messages": HELLO, "top_k": 5}, "top_k"),
    "max_tokens 0": ({"messages": HELLO, "max_tokens": 0}, "max_tokens"),
    "max_tokens too big": ({"messages": HELLO, "max_tokens": service.MAX_TOKENS + 1}, "max_tokens"),
    "max_tokens as text": ({"messages": HELLO, "max_tokens": "5"}, "max_tokens"),
    "max_tokens as bool": ({"messages": HELLO, "max_tokens": True}, "max_tokens"),
    "max_tokens fractional": ({"messages": HELLO, "max_tokens": 2.5}, "max_tokens"),
    "negative temperature": ({"messages": HELLO, "temperature": -1}, "temperature"),
    "temperature as text": ({"messages": HELLO, "temperature": "hot"}, "temperature"),
    "stream as text": ({"messages": HELLO, "stream": "yes"}, "stream"),
}
BAD_GENERATE = {
    "empty prompt": ({"prompt": ""}, "prompt"),
    "no prompt": ({"max_tokens": 5}, "prompt"),
    "prompt not text": ({"prompt": ["a"]}, "prompt"),
    "oversized prompt": ({"prompt": "x" * (service.MAX_PROMPT_CHARS + 1)}, "prompt"),
    "max_tokens too big": ({"prompt": "hi", "max_tokens": 10**6}, "max_tokens"),
    "unknown field": ({"prompt": "hi", "n": 2}, "n"),
}


def assert_refused(response: httpx.Response, field: str, status: int = 422) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert field in error["message"], error
    assert error["type"] == "invalid_request_error"


# --- fast: a fake model -----------------------------------------------------------------


@pytest.fixture
def loads():
    return []


@pytest.fixture
def fake_app(loads):
    def load() -> FakeChat:
        loads.append(FakeChat(n_ctx=FAKE_CTX))
        return loads[-1]

    return service.create_app(load, "fake", queue_size=2)


@pytest.fixture
def client(fake_app):
    with TestClient(fake_app) as test_client:
        yield test_client


def test_the_model_is_loaded_once_at_start_up_and_closed_at_shutdown(fake_app, loads):
    with TestClient(fake_app) as client:
        assert len(loads) == 1  # before any request
        for _ in range(3):
            assert client.post("/generate", json={"prompt": "hello"}).status_code == 200
        assert len(loads) == 1
        assert not loads[0].closed
    assert loads[0].closed


@pytest.mark.parametrize("case", BAD_CHAT, ids=list(BAD_CHAT))
def test_bad_chat_requests_are_422_json_naming_the_field(client, case):
    body, field = BAD_CHAT[case]
    body = {"model": "fake", **body}
    assert_refused(client.post("/v1/chat/completions", json=body), field)


@pytest.mark.parametrize("case", BAD_GENERATE, ids=list(BAD_GENERATE))
def test_bad_generate_requests_are_422_json_naming_the_field(client, case):
    body, field = BAD_GENERATE[case]
    assert_refused(client.post("/generate", json=body), field)


def test_a_body_that_is_not_json_or_too_big_is_refused_before_parsing(client):
    broken = client.post("/generate", content=b"{not json", headers={"content-type": "x"})
    assert broken.status_code == 422
    huge = client.post("/generate", content=b"x" * (service.MAX_BODY_BYTES + 1))
    assert huge.status_code == 413
    assert str(service.MAX_BODY_BYTES) in huge.json()["error"]["message"]


def test_a_prompt_over_the_context_is_400_with_the_limits(client):
    words = " ".join(["word"] * 200)
    response = client.post("/generate", json={"prompt": words, "max_tokens": 100})
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    # The numbers a caller needs: prompt size, the context and what max_tokens would fit.
    prompt_tokens = FakeChat().count_tokens([{"role": "user", "content": words}])
    assert f"{prompt_tokens} tokens" in message and f"{FAKE_CTX} tokens" in message
    room = FAKE_CTX - prompt_tokens
    assert f"at most {room}" in message
    fits = client.post("/generate", json={"prompt": words, "max_tokens": room})
    assert fits.status_code == 200


def test_chat_and_stream_give_the_same_answer_and_usage(client):
    body = {"model": "any", "messages": HELLO, "max_tokens": 8}
    plain = client.post("/v1/chat/completions", json=body).json()
    events = client.post(
        "/v1/chat/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
    ).text.split("\n\n")
    assert events[-2] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert streamed == plain["choices"][0]["message"]["content"]
    assert streamed == "You said: What is the capital of France?"
    assert chunks[-1]["usage"] == plain["usage"]
    assert plain["model"] == "fake"


def test_the_queue_refuses_beyond_its_size_with_retry_after():
    queue = service.Queue(size=1)
    first, second = queue.enter(), queue.enter()
    with pytest.raises(service.ServiceError) as refused:
        queue.enter()
    assert refused.value.status == 429
    assert int(refused.value.headers["Retry-After"]) >= 1
    second.release()
    second.release()  # idempotent: a place is given back once
    third = queue.enter()
    first.release(), third.release()
    assert queue.snapshot()["admitted"] == 0 and queue.refused == 1


def test_waiting_requests_get_the_model_in_arrival_order():
    queue = service.Queue(size=3)
    order: list[int] = []

    async def request(i: int) -> None:
        ticket = queue.enter()
        try:
            await ticket.turn()
            order.append(i)
            await anyio.sleep(0.01)
        finally:
            ticket.release()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(request, i)
                await anyio.sleep(0.001)  # arrive in order

    anyio.run(main)
    assert order == [0, 1, 2, 3]
    assert queue.served == 4 and queue.admitted == 0


@contextlib.contextmanager
def serving(model: FakeChat, queue_size: int) -> Iterator[tuple[str, Any, Any]]:
    """The service on `model` under real uvicorn, in-process, shut down in the service's
    order on leaving: (url, app, uvicorn server)."""
    app = service.create_app(lambda: model, "slow", queue_size)
    server = service.server(app, HOST, free_port(), log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://{HOST}:{server.config.port}"
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        yield url, app, server
    finally:
        server.should_exit = True  # what uvicorn's SIGTERM handler does
        thread.join(timeout=15)
    assert not thread.is_alive() and port_is_free(server.config.port)


@pytest.fixture
def slow_service():
    """The service on a slow fake model (50 ms a token), one place in its queue."""
    with serving(FakeChat(n_ctx=512, token_delay_s=0.05), 1) as (url, app, _):
        yield url, app.state.queue


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll until `condition()` holds (a state to reach, not a time to assert)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("the service never reached the expected state")
        time.sleep(0.02)


def test_a_client_that_leaves_mid_stream_frees_its_place(slow_service):
    url, queue = slow_service
    long = [{"role": "user", "content": " ".join(["word"] * 200)}]  # 200+ tokens: 10 s
    body = {"messages": long, "max_tokens": 300, "stream": True}
    start = time.monotonic()
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=10) as response:
        for line in response.iter_lines():
            if '"content"' in line:
                break  # the first token arrived: hang up
    deadline = time.monotonic() + 5
    while queue.admitted and time.monotonic() < deadline:
        time.sleep(0.02)
    assert queue.snapshot() | {"capacity": 0} == {
        "capacity": 0,
        "admitted": 0,
        "served": 1,
        "refused": 0,
        "abandoned": 1,
    }
    assert time.monotonic() - start < 5  # far less than the 10 s the whole answer takes
    reply = httpx.post(url + "/generate", json={"prompt": "next please"}, timeout=10)
    assert reply.json()["completion"] == "You said: next please"


def test_a_burst_beyond_the_queue_is_answered_in_part_and_refused_at_once(slow_service):
    url, queue = slow_service  # one generating, one waiting; 0.05 s a token
    outcomes = bursts.burst(url, 6, {"prompt": "one two three", "max_tokens": 8})
    summary = bursts.burst_summary(outcomes)
    assert summary["requests"].to_dict() == {200: 2, 429: 4}
    assert summary.loc[429, "max_s"] < summary.loc[200, "p50_s"]  # refused without waiting
    assert queue.snapshot()["admitted"] == 0


def test_a_burst_records_a_client_that_got_no_answer_in_time_as_status_0(slow_service):
    url, _ = slow_service  # "You said: one two three": 5 tokens, 0.25 s
    outcomes = bursts.burst(url, 1, {"prompt": "one two three"}, timeout_s=0.1)
    assert outcomes["status"].tolist() == [0]


def long_reply(messages: list[dict[str, str]]) -> str:
    """300 words: 15 s at 50 ms a token, far longer than any test waits."""
    return " ".join(["word"] * 300)


LONG = {"prompt": "Tell me a long story.", "max_tokens": 300}


def test_sigterm_answers_the_waiters_503_and_frees_the_model_after_the_last_step(monkeypatch):
    monkeypatch.setattr(service, "DRAIN_S", 0.5)  # the generating request's last half second
    model = FakeChat(long_reply, n_ctx=512, token_delay_s=0.05)
    statuses: dict[int, int | str] = {}
    with serving(model, 3) as (url, app, server):

        def ask(i: int) -> None:
            try:
                statuses[i] = httpx.post(url + "/generate", json=LONG, timeout=30).status_code
            except httpx.HTTPError as err:
                statuses[i] = repr(err)

        clients = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for client in clients:
            client.start()
        wait_for(lambda: app.state.queue.admitted == 4)
        server.should_exit = True  # uvicorn's SIGTERM handler does exactly this
        for client in clients:
            client.join(timeout=30)
    # every client was answered: the three waiting at once, the generating one stopped
    assert sorted(statuses.values()) == [503] * 4, statuses
    assert model.closed and app.state.queue.admitted == 0


def raw_answer(url: str, head: bytes, pieces: Iterable[bytes] = ()) -> tuple[bytes, bytes]:
    """Send a POST's head and body pieces over a plain socket, stopping once the service
    answers (or closes); (status line and headers, JSON body) of its answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
        with contextlib.suppress(OSError):  # the service may close before the last piece
            for piece in pieces:
                sock.sendall(piece)
        answer = b""
        while not answer.rstrip().endswith(b"}"):
            data = sock.recv(65_536)  # a service waiting for the rest of the body: timeout
            if not data:
                break
            answer += data
    status, _, body = answer.partition(b"\r\n\r\n")
    return status, body


def test_a_chunked_body_over_the_limit_is_refused_while_it_arrives(slow_service):
    url, queue = slow_service
    piece = b"x" * 65_536
    chunks = (b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(5))  # 320 KB, no end
    status, body = raw_answer(url, b"Transfer-Encoding: chunked\r\n", chunks)
    assert status.startswith(b"HTTP/1.1 413"), status
    assert str(service.MAX_BODY_BYTES).encode() in body
    assert queue.admitted == 0


def test_a_declared_length_over_the_limit_is_refused_before_the_body(slow_service):
    url, _ = slow_service
    status, body = raw_answer(url, b"Content-Length: %d\r\n" % (service.MAX_BODY_BYTES + 1))
    assert status.startswith(b"HTTP/1.1 413"), status
    assert str(service.MAX_BODY_BYTES).encode() in body


@pytest.mark.parametrize("waiting_streams", [False, True], ids=["plain", "stream waiting"])
def test_clients_that_give_up_free_their_places_for_the_next_one(waiting_streams):
    model = FakeChat(long_reply, n_ctx=512, token_delay_s=0.05)
    with serving(model, 1) as (url, app, _):
        queue = app.state.queue  # one generating, one waiting: both held by clients that leave

        def impatient(stream: bool) -> None:
            """Gives up after half a second, whatever it was waiting for."""
            body = {"messages": HELLO, "max_tokens": 300, "stream": stream}
            deadline = time.monotonic() + 0.5
            with contextlib.suppress(httpx.TimeoutException):
                with httpx.stream(
                    "POST", url + "/v1/chat/completions", json=body, timeout=0.5
                ) as r:
                    for _ in r.iter_bytes():  # a stream's tokens would never time out a read
                        if time.monotonic() > deadline:
                            break

        first = threading.Thread(target=impatient, args=(False,))
        first.start()
        wait_for(lambda: queue.generating == 1)
        second = threading.Thread(target=impatient, args=(waiting_streams,))
        second.start()
        first.join(), second.join()
        wait_for(lambda: queue.admitted == 0)  # both places free again
        reply = httpx.post(url + "/generate", json={"prompt": "hi", "max_tokens": 3}, timeout=10)
    assert reply.status_code == 200  # not 429: nobody is left holding a place
    assert (queue.abandoned, queue.refused, queue.admitted) == (2, 0, 0)


# --- structured output ---------------------------------------------------------------------

VERDICT = {
    "type": "object",
    "properties": {
        "label": {"enum": ["yes", "no"]},
        "reason": {"type": "string", "maxLength": 60},
    },
    "required": ["label", "reason"],
}


def json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}}


BAD_FORMATS = {
    "unknown type": ({"type": "xml"}, "response_format.type"),
    "json_schema without a schema": ({"type": "json_schema"}, "response_format"),
    "schema on json_object": (
        {"type": "json_object", "json_schema": {"name": "v", "schema": VERDICT}},
        "response_format",
    ),
    "schema not an object": (
        {"type": "json_schema", "json_schema": {"name": "v", "schema": "yes|no"}},
        "response_format.json_schema.schema",
    ),
    "schema llama.cpp cannot follow": (
        json_schema({"type": "string", "pattern": "(unclosed"}),
        "response_format.json_schema.schema",
    ),
    "remote $ref": (
        json_schema({"$ref": "https://example.com/schema.json"}),
        "response_format.json_schema.schema",
    ),
    "bad schema name": (
        {"type": "json_schema", "json_schema": {"name": "a b", "schema": VERDICT}},
        "response_format.json_schema.name",
    ),
}


@pytest.mark.parametrize("case", BAD_FORMATS, ids=list(BAD_FORMATS))
def test_a_response_format_the_engine_cannot_follow_is_refused_at_the_door(client, loads, case):
    response_format, field = BAD_FORMATS[case]
    body = {"messages": HELLO, "response_format": response_format}
    assert_refused(client.post("/v1/chat/completions", json=body), field)
    assert loads[0].calls == []


def test_a_json_schema_reaches_the_engine_in_llama_cpp_pythons_spelling():
    seen: list[dict[str, Any]] = []

    class Recording(FakeChat):
        def chat(self, messages, max_tokens=256, temperature=0.0, stream=False, **kw):
            seen.append(kw)
            return super().chat(messages, max_tokens, temperature, stream)

    app = service.create_app(lambda: Recording(n_ctx=FAKE_CTX), "fake", 2)
    with TestClient(app) as client:
        for response_format in (json_schema(VERDICT), {"type": "json_object"}, {"type": "text"}):
            body = {"messages": HELLO, "max_tokens": 8, "response_format": response_format}
            assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert seen == [
        {"response_format": {"type": "json_object", "schema": VERDICT}},
        {"response_format": {"type": "json_object"}},
        {},
    ]


# --- metrics ---------------------------------------------------------------------------------


def test_the_metrics_move_by_exactly_what_a_known_sequence_of_requests_adds():
    def reply(messages: list[dict[str, str]]) -> str:
        if messages[-1]["content"] == "boom":
            raise RuntimeError("the engine failed")
        return long_reply(messages) if messages[-1]["content"] == "long" else "one two three"

    with serving(FakeChat(reply, n_ctx=FAKE_CTX, token_delay_s=0.01), 0) as (url, app, _):
        queue = app.state.queue
        before = metrics.scrape(url)
        with httpx.Client(base_url=url, timeout=30) as http:
            usage = []
            for _ in range(2):
                usage.append(http.post("/generate", json={"prompt": "hi"}).json()["usage"])
            assert http.post("/generate", json={"prompt": ""}).status_code == 422
            huge = b"Content-Length: %d\r\n" % (service.MAX_BODY_BYTES + 1)
            assert raw_answer(url, huge)[0].startswith(b"HTTP/1.1 413")
            over = {"messages": [{"role": "user", "content": "word " * 300}]}
            assert http.post("/v1/chat/completions", json=over).status_code == 400
            assert http.post("/generate", json={"prompt": "boom"}).status_code == 500
            stream = {"messages": HELLO, "max_tokens": 16, "stream": True}
            stream["stream_options"] = {"include_usage": True}
            events = http.post("/v1/chat/completions", json=stream).text.split("\n\n")
            usage.append(json.loads(events[-3].removeprefix("data: "))["usage"])
            held = {"messages": [{"role": "user", "content": "long"}], "max_tokens": 200}
            held["stream"] = True
            with http.stream("POST", "/v1/chat/completions", json=held) as response:
                next(response.iter_lines())  # it has the model now
                assert http.post("/generate", json={"prompt": "hi"}).status_code == 429
            wait_for(lambda: queue.admitted == 0)  # the held stream's client left
            assert http.get("/health").status_code == 200
            assert http.get("/nowhere").status_code == 404
        after = metrics.scrape(url)

    def grew(name: str, **labels: str) -> float:
        return metrics.delta(before, after, name, **labels)

    answered = {  # (route, status): requests
        ("/generate", "200"): 2, ("/generate", "422"): 1, ("/generate", "413"): 1,
        ("/generate", "500"): 1, ("/generate", "429"): 1,
        ("/v1/chat/completions", "400"): 1, ("/v1/chat/completions", "200"): 2,
        ("/health", "200"): 1, ("other", "404"): 1, ("/metrics", "200"): 1,
    }  # fmt: skip
    for (route, status), count in answered.items():
        assert grew("llmops_requests_total", route=route, status=status) == count, (route, status)
    assert grew("llmops_requests_total") == sum(answered.values())
    assert grew("llmops_request_duration_seconds_count", route="/generate") == 6
    assert grew("llmops_queue_refusals_total") == 1
    assert grew("llmops_requests_abandoned_total") == 1
    completed = 3  # two /generate and one stream answered to the end
    assert grew("llmops_generated_tokens_total") == sum(u["completion_tokens"] for u in usage)
    assert grew("llmops_prompt_tokens_total") == sum(u["prompt_tokens"] for u in usage)
    assert grew("llmops_time_to_first_token_seconds_count") == completed
    assert grew("llmops_generation_tokens_per_second_count") == completed
    assert after.value("llmops_queue_waiting") == after.value("llmops_queue_generating") == 0
    assert after.value("llmops_queue_capacity") == 1
    assert after.value("llmops_model_load_seconds") > 0


def test_the_metrics_stay_correct_under_concurrent_load():
    model = FakeChat(n_ctx=FAKE_CTX, token_delay_s=0.01)
    with serving(model, 2) as (url, app, _):
        before = metrics.scrape(url)
        with metrics.Sampler(url, interval_s=0.01) as sampler:
            crowd = bursts.burst(url, 24, {"prompt": "one two three four", "max_tokens": 8})
        after = sampler.scrapes[-1]
    statuses = crowd["status"].value_counts().to_dict()
    assert set(statuses) == {200, 429} and sampler.errors == []
    for status, count in statuses.items():
        labels = {"route": "/generate", "status": str(status)}
        assert metrics.delta(before, after, "llmops_requests_total", **labels) == count
    assert metrics.delta(before, after, "llmops_queue_refusals_total") == statuses[429]
    per_answer = len(echo([{"role": "user", "content": "one two three four"}]).split())
    tokens = metrics.delta(before, after, "llmops_generated_tokens_total")
    assert tokens == statuses[200] * per_answer
    # never more admitted than the queue holds (1 generating + 2 waiting; between two turns
    # all three wait for a moment), never two generating at once
    admitted = [
        s.value("llmops_queue_waiting") + s.value("llmops_queue_generating")
        for s in sampler.scrapes
    ]
    assert max(admitted) <= 3
    assert max(s.value("llmops_queue_generating") for s in sampler.scrapes) <= 1
    assert after.value("llmops_queue_waiting") == after.value("llmops_queue_generating") == 0
    assert len(sampler.scrapes) > 2  # scraped while the burst ran, every page parsed


# --- the real service process -------------------------------------------------------------


@pytest.fixture(scope="module")
def service_process(session):
    """The service started here for this module's tests; None when LLMOPS_SERVICE_URL names
    one that runs elsewhere (the container)."""
    if os.environ.get(SERVICE_URL_ENV):
        yield None
        return
    with service.ServiceServer(session, n_ctx=1024, queue_size=2) as server:
        yield server


@pytest.fixture(scope="module")
def service_url(service_process):
    if service_process is None:
        return os.environ[SERVICE_URL_ENV].rstrip("/")
    return service_process.url


@pytest.fixture(scope="module")
def http(service_url):
    # One client for every test, with room for 50 connections at once.
    limits = httpx.Limits(max_connections=64)
    with httpx.Client(base_url=service_url, timeout=60, limits=limits) as client:
        yield client


@pytest.mark.model
def test_health_names_the_model_and_an_empty_queue(http, session):
    health = http.get("/health").json()
    assert health["status"] == "ok"
    assert health["model"] == session.choice("chat").model
    assert health["queue"]["admitted"] == 0


@pytest.mark.model
def test_the_openai_client_chats_and_streams_the_same_greedy_answer(service_url):
    client = openai.OpenAI(base_url=service_url + "/v1", api_key="none", max_retries=0)
    model = client.models.list().data[0].id
    plain = client.chat.completions.create(model=model, messages=HELLO, max_tokens=16)
    text = plain.choices[0].message.content
    assert text.strip() and plain.usage.completion_tokens > 0
    stream = client.chat.completions.create(
        model=model,
        messages=HELLO,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 1  # streamed token by token
    assert "".join(pieces) == text
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens


@pytest.mark.model
def test_generate_returns_a_completion_and_its_usage(http):
    reply = http.post("/generate", json={"prompt": "Name a colour.", "max_tokens": 8}).json()
    assert reply["completion"].strip()
    assert 0 < reply["usage"]["completion_tokens"] <= 8


@pytest.mark.model
@pytest.mark.parametrize("case", BAD_CHAT, ids=list(BAD_CHAT))
def test_the_real_service_refuses_bad_input_with_4xx_json(http, case):
    body, field = BAD_CHAT[case]
    assert_refused(http.post("/v1/chat/completions", json={"model": "m", **body}), field)


@pytest.mark.model
def test_over_the_context_is_a_readable_400_through_the_openai_client(http, service_url):
    n_ctx = http.get("/health").json()["n_ctx"]
    assert n_ctx <= 2048  # so that 2600+ tokens fit in the 15,600 characters below
    client = openai.OpenAI(base_url=service_url + "/v1", api_key="none", max_retries=0)
    long = [{"role": "user", "content": "lorem ipsum " * 1300}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="m", messages=long, max_tokens=8)
    assert f"context holds {n_ctx} tokens" in str(refused.value)


@pytest.mark.model
def test_fifty_concurrent_clients_get_answers_or_429_never_an_error(http, service_url):
    start = time.monotonic()
    outcomes = bursts.burst(service_url, 50, {"prompt": "Say a number.", "max_tokens": 4})
    print(bursts.burst_summary(outcomes), f"\n50 clients: {time.monotonic() - start:.1f} s")
    statuses = outcomes["status"]
    assert set(statuses) <= {200, 429}
    assert (statuses == 200).sum() >= 3  # the one generating and the two waiting
    assert (statuses == 429).sum() > 0  # 50 at once cannot all fit a queue of 2
    assert (outcomes.loc[statuses == 429, "retry_after_s"] >= 1).all()
    assert http.get("/health").json()["queue"]["admitted"] == 0


@pytest.mark.model
def test_usage_is_what_the_engine_itself_counts_streamed_or_not(http, service_url, tiny_chat):
    # The emoji and the markup come out of llama.cpp several tokens to a chunk, so counting
    # streamed chunks would undercount; cut at max_tokens and stopped early alike. Against
    # the container (another llama.cpp build), only streamed and plain are compared.
    local = not os.environ.get(SERVICE_URL_ENV)
    for content, max_tokens in (("Write <b>bold</b> html and an emoji please", 30), ("Hi", 200)):
        messages = [{"role": "user", "content": content}]
        tiny_chat.reset()
        engine = tiny_chat.chat(messages, max_tokens=max_tokens)["usage"]
        body = {"messages": messages, "max_tokens": max_tokens}
        plain = http.post("/v1/chat/completions", json=body).json()["usage"]
        events = http.post(
            "/v1/chat/completions",
            json={**body, "stream": True, "stream_options": {"include_usage": True}},
        ).text.split("\n\n")
        streamed = json.loads(events[-3].removeprefix("data: "))["usage"]
        assert plain == streamed == (engine if local else plain), content


@pytest.mark.model
def test_a_json_schema_holds_the_real_models_reply_to_it(service_url):
    client = openai.OpenAI(base_url=service_url + "/v1", api_key="none", max_retries=0)
    question = [{"role": "user", "content": "Is the sky blue? Answer with a label and a reason."}]
    for stream in (False, True):
        kwargs = dict(model="m", messages=question, max_tokens=80, temperature=0)
        kwargs["response_format"] = json_schema(VERDICT)
        if stream:
            text = "".join(
                c.choices[0].delta.content or ""
                for c in client.chat.completions.create(**kwargs, stream=True)
                if c.choices
            )
        else:
            text = client.chat.completions.create(**kwargs).choices[0].message.content
        verdict = json.loads(text)
        assert set(verdict) == {"label", "reason"} and verdict["label"] in ("yes", "no")


@pytest.mark.model
def test_sigterm_with_a_full_queue_answers_every_client_and_exits_cleanly(session):
    """Nine long requests (one generating, eight waiting), then SIGTERM: before, uvicorn's
    grace ran out, the model was freed under the decoding thread and the process died of
    SIGSEGV with none of the nine answered."""
    if os.environ.get(SERVICE_URL_ENV):
        pytest.skip("the container's shutdown is checked by scripts/test_image.sh")
    statuses: dict[int, int | str] = {}
    with service.ServiceServer(session, n_ctx=1024, queue_size=8, n_threads=1) as server:

        def ask(i: int) -> None:
            body = {"prompt": LONG_STORY[0]["content"], "max_tokens": 900}
            try:
                statuses[i] = httpx.post(
                    server.url + "/generate", json=body, timeout=60
                ).status_code
            except httpx.HTTPError as err:
                statuses[i] = repr(err)

        clients = [threading.Thread(target=ask, args=(i,)) for i in range(9)]
        for client in clients:
            client.start()
        wait_for(lambda: httpx.get(server.url + "/health").json()["queue"]["admitted"] == 9, 30)
        server.process.terminate()  # what docker stop, systemd and Kubernetes send
        code = server.process.wait(timeout=service.SHUTDOWN_GRACE_S + 5)
        for client in clients:
            client.join(timeout=30)
        log = server.log_tail(40)
    assert code == -signal.SIGTERM, log  # uvicorn re-raises SIGTERM; a crash says -11
    assert sorted(statuses) == list(range(9)), statuses
    assert set(statuses.values()) <= {200, 503}, statuses  # every client got an answer
    assert list(statuses.values()).count(503) >= 8  # the waiters at once, not after the grace
    assert "Application shutdown complete" in log  # the model was freed, in order


@pytest.mark.model
def test_sigterm_lets_the_request_in_flight_finish_and_frees_the_port(service_process):
    """The module's last test: it stops the module's service."""
    if service_process is None:
        pytest.skip("the container's shutdown is checked by scripts/test_image.sh")
    server = service_process
    body = {"messages": LONG_STORY, "max_tokens": 24, "stream": True}  # done within DRAIN_S
    lines = []
    url = server.url + "/v1/chat/completions"
    with httpx.stream("POST", url, json=body, timeout=60) as response:
        for line in response.iter_lines():
            lines.append(line)
            if len(lines) == 3:
                server.process.terminate()  # SIGTERM mid-answer
    events = [line for line in lines if line]
    assert events[-1] == "data: [DONE]"  # the answer was not cut off
    assert '"finish_reason": null' not in events[-2]
    # uvicorn re-raises the SIGTERM once it has shut down, so the status says so; a kill
    # after the 10 s grace of ServerProcess.stop() would say -9.
    assert server.process.wait(timeout=service.SHUTDOWN_GRACE_S + 5) == -signal.SIGTERM
    assert "Application shutdown complete" in server.log_tail()  # the model was closed
    assert port_is_free(server.port)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--port", "70000"], "--port"),
        (["--port", "0"], "--port"),
        (["--port", "http"], "--port"),
        (["--n-ctx", "0"], "--n-ctx"),
        (["--queue", "-1"], "--queue"),
        (["--n-threads", "0"], "--n-threads"),
        (["--host", " "], "--host"),
    ],
)
def test_the_command_line_is_checked_before_the_model_is_loaded(argv, named, monkeypatch, capsys):
    import llmops_lib

    monkeypatch.setattr(llmops_lib, "setup", lambda **kw: pytest.fail("setup() ran first"))
    with pytest.raises(SystemExit) as refused:
        service.main(argv)
    assert refused.value.code == 2
    assert named in capsys.readouterr().err


def test_the_notebook_shows_the_service_s_own_code():
    routes = service.source_excerpt('    @app.post("/generate")', "    def begin_shutdown")
    assert routes.startswith('    @app.post("/generate")') and "complete(request" in routes
    assert "def begin_shutdown" not in routes
    with pytest.raises(InputError, match="starts with 'no such line'"):
        service.source_excerpt("no such line", "x")


def test_the_image_record_is_read_or_its_absence_said(tmp_path):
    assert "no `make test-image` record" in service.image_record(tmp_path)
    record = {
        "image": "llmops-service",
        "measured_at": "2026-12-03T17:36:40+00:00",
        "image_bytes": 671_835_946,
        "peak_memory_bytes": 225_338_982.0,
        "peak_memory_source": "docker stats sampled each second",
        "memory_limit": "4g",
        "tests": "passed",
    }
    path = results.save("test-image", ".json", lambda t: t.write_text(json.dumps(record)), tmp_path)
    shown = service.image_record(tmp_path)
    assert path.name in shown and "2026-12-03T17:36:40" in shown
    assert "672 MB" in shown and "215 MiB" in shown and "limit of 4g" in shown
