"""The completion service: validation and the queue on a fake model (milliseconds), then the
real service process with the tiny model over real HTTP (uvicorn on 127.0.0.1).

The HTTP tests take the service's address from a fixture, so `scripts/test_image.sh` runs
the same tests against the container (LLMOPS_SERVICE_URL).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import anyio
import httpx
import openai
import pytest
import uvicorn
from fakes import FakeChat
from fastapi.testclient import TestClient

from llmops_lib import loadtest, service
from llmops_lib.process import HOST, free_port, port_is_free

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


@pytest.fixture
def slow_service():
    """The service on a slow fake model (50 ms a token) under real uvicorn, in-process."""
    app = service.create_app(lambda: FakeChat(n_ctx=512, token_delay_s=0.05), "slow", 1)
    config = uvicorn.Config(app, host=HOST, port=free_port(), log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://{HOST}:{config.port}"
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        yield url, app.state.queue
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert not thread.is_alive() and port_is_free(config.port)


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
    outcomes = loadtest.burst(url, 6, {"prompt": "one two three", "max_tokens": 8})
    summary = loadtest.burst_summary(outcomes)
    assert summary["requests"].to_dict() == {200: 2, 429: 4}
    assert summary.loc[429, "max_s"] < summary.loc[200, "p50_s"]  # refused without waiting
    assert queue.snapshot()["admitted"] == 0


def test_a_burst_records_a_client_that_got_no_answer_in_time_as_status_0(slow_service):
    url, _ = slow_service  # "You said: one two three": 5 tokens, 0.25 s
    outcomes = loadtest.burst(url, 1, {"prompt": "one two three"}, timeout_s=0.1)
    assert outcomes["status"].tolist() == [0]


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
    outcomes = loadtest.burst(service_url, 50, {"prompt": "Say a number.", "max_tokens": 4})
    print(loadtest.burst_summary(outcomes), f"\n50 clients: {time.monotonic() - start:.1f} s")
    statuses = outcomes["status"]
    assert set(statuses) <= {200, 429}
    assert (statuses == 200).sum() >= 3  # the one generating and the two waiting
    assert (statuses == 429).sum() > 0  # 50 at once cannot all fit a queue of 2
    assert (outcomes.loc[statuses == 429, "retry_after_s"] >= 1).all()
    assert http.get("/health").json()["queue"]["admitted"] == 0


@pytest.mark.model
def test_sigterm_lets_the_request_in_flight_finish_and_frees_the_port(service_process):
    """The module's last test: it stops the module's service."""
    if service_process is None:
        pytest.skip("the container's shutdown is checked by scripts/test_image.sh")
    server = service_process
    body = {"messages": LONG_STORY, "max_tokens": 64, "stream": True}
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
