"""The local llama.cpp server and the openai client, with the real tiny model."""

from __future__ import annotations

import socket

import pytest
from llama_cpp.llama_chat_format import hf_tokenizer_config_to_chat_formatter

from llmops_lib import server
from llmops_lib.profiles import get as get_profile
from llmops_lib.session import Session

MESSAGES = [
    {"role": "system", "content": "Answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture(scope="module")
def running(session):
    """One local server for the tests that only talk to it."""
    with server.LocalServer.for_session(session, n_ctx=512) as local:
        yield local


@pytest.fixture
def silent_url():
    """A port that accepts connections but never answers (a hung server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((server.HOST, 0))
        sock.listen(16)
        yield f"http://{server.HOST}:{sock.getsockname()[1]}/v1"


def test_server_renders_the_same_gemma_prompt_as_the_in_process_model(tiny_chat):
    # The exact formatter llama_cpp.server builds from --hf_tokenizer_config_path.
    formatter = hf_tokenizer_config_to_chat_formatter(server.gemma_tokenizer_config())
    conversation = [
        *MESSAGES,
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
    ]
    assert formatter(messages=conversation).prompt == tiny_chat.prompt_text(conversation)
    assert server.GEMMA_BOS == tiny_chat._token_text(tiny_chat.llm.token_bos())


def test_chat_through_the_openai_client_matches_the_in_process_model(running, tiny_chat):
    endpoint = server.connect(running.base_url)
    answer = endpoint.chat(MESSAGES, max_tokens=16)
    local = tiny_chat.chat(MESSAGES, max_tokens=16)["choices"][0]["message"]["content"]
    assert answer.strip()
    assert answer == local  # same prompt, greedy decoding: same tokens


def test_streaming_pieces_add_up_to_the_answer_and_are_timed(running):
    endpoint = server.connect(running.base_url)
    pieces = list(endpoint.stream(MESSAGES, max_tokens=16))
    assert len(pieces) > 1
    assert "".join(pieces) == endpoint.chat(MESSAGES, max_tokens=16)
    reply = endpoint.timed_chat(MESSAGES, max_tokens=16)
    assert reply.text == "".join(pieces)
    assert reply.completion_tokens == len(pieces)
    assert 0 < reply.ttft_s <= reply.total_s


def test_a_prompt_over_the_context_is_the_servers_readable_400(running):
    endpoint = server.connect(running.base_url)
    too_long = [{"role": "user", "content": "word " * 2000}]
    with pytest.raises(server.EndpointError) as caught:
        endpoint.chat(too_long, max_tokens=8)
    err = caught.value
    assert err.status == 400
    assert running.base_url in str(err) and "context length is 512" in str(err)
    assert err.__cause__ is None and err.__suppress_context__  # no chained traceback dump


def test_endpoint_env_var_points_at_an_existing_server(running, session, monkeypatch):
    monkeypatch.setenv(server.ENDPOINT_ENV, running.base_url)
    monkeypatch.setattr(server.LocalServer, "start", lambda self: pytest.fail("started a server"))
    with server.endpoint(session) as endpoint:
        assert endpoint.base_url == running.base_url
        assert endpoint.chat(MESSAGES, max_tokens=4).strip()


def test_server_is_gone_after_the_with_block(session):
    with server.LocalServer.for_session(session, n_ctx=256) as local:
        port = local.port
        assert not server.port_is_free(port)
        assert server.connect(local.base_url).chat(MESSAGES, max_tokens=4).strip()
    assert local.process is None
    assert server.port_is_free(port)


def test_server_is_gone_after_an_exception_inside_the_block(session):
    with pytest.raises(RuntimeError, match="boom"):
        with server.LocalServer.for_session(session, n_ctx=256) as local:
            port = local.port
            raise RuntimeError("boom")
    assert local.process is None
    assert server.port_is_free(port)


def test_unreachable_endpoint_names_the_url():
    url = f"http://{server.HOST}:{server.free_port()}/v1"
    with pytest.raises(server.EndpointError, match="Cannot connect to " + url):
        server.connect(url)


def test_hung_endpoint_fails_within_the_timeout_naming_the_url(silent_url):
    with pytest.raises(server.EndpointError, match=r"No answer from .* within 1 s") as caught:
        server.connect(silent_url, timeout_s=1)
    assert caught.value.url == silent_url


def test_missing_model_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        server.LocalServer(tmp_path / "nope.gguf")


def test_a_profile_without_a_gguf_chat_model_asks_for_an_endpoint(session):
    multi = Session(profile=get_profile("multi-gpu"), hardware=session.hardware)
    with pytest.raises(ValueError, match=server.ENDPOINT_ENV):
        server.LocalServer.for_session(multi)


def test_a_server_that_dies_on_start_reports_its_log_and_leaves_nothing(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)  # right magic, no model inside
    local = server.LocalServer(broken, n_ctx=256)
    with pytest.raises(RuntimeError, match="exited with code"):
        local.start()
    assert local.process is None and local.log_path is None
    assert server.port_is_free(local.port)
