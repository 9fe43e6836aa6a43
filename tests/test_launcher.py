"""`python -m llmops_lib.commands.llama_cpp_server`: the stock llama_cpp.server, with its chat
requests checked at the door and its chat handler fixed to the GGUF's template, contents plain."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import httpx
import pytest

from llmops_lib.commands.llama_cpp_server import check_chat
from llmops_lib.core.errors import InputError
from llmops_lib.engines.process import free_port

HI = [{"role": "user", "content": "Say hi"}]
VERDICT = {
    "type": "object",
    "properties": {"label": {"enum": ["yes", "no"]}, "reason": {"type": "string", "maxLength": 60}},
    "required": ["label", "reason"],
}

# What the stock server answered 500 to, or generated to the end of the context for.
REFUSED = {
    "no messages": ({"messages": []}, "messages: send a non-empty list"),
    "messages missing": ({}, "messages: send a non-empty list"),
    "content null": (
        {"messages": [{"role": "user", "content": None}]},
        r"messages\[0\].content is null",
    ),
    "assistant content null": (
        {"messages": [*HI, {"role": "assistant", "content": None}, *HI]},
        r"messages\[1\].content is null",
    ),
    "no content": ({"messages": [{"role": "user"}]}, r"messages\[0\] has no content"),
    "unknown role": (
        {"messages": [{"role": "robot", "content": "hi"}]},
        r"messages\[0\].role is 'robot'",
    ),
    "image part": (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        r"messages\[0\].content\[0\] is a 'image_url' part",
    ),
    "empty part list": (
        {"messages": [{"role": "user", "content": []}]},
        r"messages\[0\].content is a list",
    ),
    "max_tokens 0": ({"messages": HI, "max_tokens": 0}, "max_tokens=0"),
    "max_tokens -1": ({"messages": HI, "max_tokens": -1}, "max_tokens=-1"),
    "max_tokens as text": ({"messages": HI, "max_tokens": "8"}, "max_tokens='8'"),
    "unknown response_format": (
        {"messages": HI, "response_format": {"type": "xml"}},
        "response_format",
    ),
    "schema llama.cpp cannot follow": (
        {
            "messages": HI,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "v", "schema": {"type": "string", "pattern": "(x"}},
            },
        },
        "cannot turn it into a grammar",
    ),
    "temperature as text": ({"messages": HI, "temperature": "hot"}, "temperature"),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_requests_the_stock_server_mishandles_are_refused_naming_the_field(case):
    body, message = REFUSED[case]
    with pytest.raises(InputError, match=message):
        check_chat(body)


def test_text_parts_are_joined_and_a_json_schema_is_spelt_for_llama_cpp_python():
    parts = [{"type": "text", "text": "Say"}, {"type": "text", "text": "hi"}]
    schema = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": VERDICT}}
    checked = check_chat(
        {"messages": [{"role": "user", "content": parts}], "response_format": schema}
    )
    assert checked["messages"] == [{"role": "user", "content": "Say\nhi"}]
    assert checked["response_format"] == {"type": "json_object", "schema": VERDICT}
    plain = {"messages": HI, "max_tokens": 8}
    assert check_chat(plain) == plain  # a request the stock server handles passes unchanged


@pytest.fixture(scope="module")
def launched(session):
    with session.server("llama_cpp.server", n_ctx=512, n_threads=1) as server:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            yield http


@pytest.mark.model
@pytest.mark.parametrize("case", ["content null", "unknown role", "no messages", "max_tokens 0"])
def test_the_launched_server_answers_400_not_500_or_a_run_to_the_end(launched, case):
    body, message = REFUSED[case]
    response = launched.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert re.search(message, error["message"]), error


@pytest.mark.model
def test_content_parts_make_the_same_prompt_as_the_joined_text(launched):
    parts = [{"type": "text", "text": "Name a colour."}, {"type": "text", "text": "One word."}]

    def prompt_tokens(content: object) -> int:
        body = {"messages": [{"role": "user", "content": content}], "max_tokens": 2}
        response = launched.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        return response.json()["usage"]["prompt_tokens"]

    assert prompt_tokens(parts) == prompt_tokens("Name a colour.\nOne word.")


@pytest.mark.model
def test_a_json_schema_holds_the_launched_servers_reply(launched):
    schema = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": VERDICT}}
    question = [{"role": "user", "content": "Is the sky blue? Give a label and a reason."}]
    body = {"messages": question, "max_tokens": 80, "temperature": 0, "response_format": schema}
    response = launched.post("/v1/chat/completions", json=body)
    verdict = json.loads(response.json()["choices"][0]["message"]["content"])
    assert set(verdict) == {"label", "reason"} and verdict["label"] in ("yes", "no")


@pytest.mark.model
def test_chat_format_is_refused_by_name_not_ignored(session):
    command = [
        sys.executable, "-m", "llmops_lib.commands.llama_cpp_server",
        "--model", str(session.model_path("chat")), "--chat_format", "chatml",
        "--port", str(free_port()),
    ]  # fmt: skip
    ran = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert ran.returncode != 0
    assert "--chat_format 'chatml' is refused" in ran.stderr
    assert "Uvicorn running" not in ran.stderr  # it never served
