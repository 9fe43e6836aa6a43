"""The `served` engine: a model on a running llama-server, named by a profile like any other.

tests/test_engines.py checks it against the LocalModel contract; here, what is particular
to a model on a server: the server must serve the profile's model and hold its context,
what the server does not offer is refused by name, and reset() reaches the server's cache.
"""

from __future__ import annotations

import pytest

import llmops_lib
from llmops_lib.core.errors import EndpointError, InputError, UnknownNameError
from llmops_lib.core.plain_text import PLAIN, tokenize_marked
from llmops_lib.engines.endpoint import ENDPOINT_ENV
from llmops_lib.engines.llamacpp import tokenize_plain
from llmops_lib.engines.served import ServedModel
from llmops_lib.lessons.nb06.guard import ModelGuard, load_guard
from llmops_lib.lessons.nb06.guard_prompts import conversation
from llmops_lib.planning import catalog

MESSAGES = [{"role": "user", "content": "Name one colour."}]


@pytest.fixture
def served_session(monkeypatch):
    monkeypatch.delenv(ENDPOINT_ENV, raising=False)
    return llmops_lib.setup(profile="served", quiet=True)


def test_without_the_url_the_variable_to_set_is_named(served_session):
    with pytest.raises(InputError, match=f"is served: set {ENDPOINT_ENV} to the URL"):
        served_session.model()


def test_a_served_role_has_no_local_file_and_takes_no_thread_option(served_session, monkeypatch):
    monkeypatch.setenv(ENDPOINT_ENV, "http://127.0.0.1:9/v1")
    with pytest.raises(InputError, match="runs on a server .*127.0.0.1:9/v1.*session.model"):
        served_session.model_path("chat")
    with pytest.raises(UnknownNameError, match="served engine option 'n_threads'. Valid: n_ctx"):
        served_session.model(n_threads=2)
    with pytest.raises(InputError, match="precision='nf4'"):
        served_session.model(precision="nf4")
    with pytest.raises(InputError, match="already runs on the server at LLMOPS_ENDPOINT"):
        served_session.server("llama-server")
    assert served_session.model_path("classifier").is_dir()  # the local roles stay local


@pytest.mark.model
def test_a_server_with_another_model_or_a_smaller_context_is_refused(tiny_served):
    url = tiny_served.endpoint.base_url
    with pytest.raises(InputError, match="not the profile's Llama 3.1 8B.*vocabulary 128256"):
        ServedModel(url, catalog.get("llama-3.1-8b-instruct"))
    spec = catalog.get("smollm2-135m-instruct")
    with pytest.raises(InputError, match="n_ctx=4096: the server .* holds 2048 tokens"):
        ServedModel(url, spec, n_ctx=4096)


@pytest.mark.model
def test_an_openai_server_without_llama_servers_endpoints_is_refused_by_name(session):
    with session.server("llama_cpp.server", n_ctx=512) as other:
        with pytest.raises(EndpointError, match="/props does not exist.*session.endpoint"):
            ServedModel(other.base_url, catalog.get("smollm2-135m-instruct"))


@pytest.mark.model
def test_marked_contents_are_sent_as_text_tokens_like_in_process(tiny_served, tiny_chat):
    prompt = tiny_chat.prompt_text([{"role": "user", "content": f"{PLAIN}a<|im_end|>b{PLAIN}"}])
    in_process = tokenize_plain(tiny_chat.llm, prompt, add_bos=False)
    over_http = tokenize_marked(prompt, tiny_served._tokenize, False)
    assert over_http == in_process
    special = tiny_chat.tokenize("<|im_end|>")
    assert len(special) == 1 and special[0] in in_process  # the template's own turn ends
    assert in_process.count(special[0]) == prompt.count("<|im_end|>") - 1  # not the typed one


@pytest.mark.model
def test_reset_makes_the_server_process_the_whole_prompt_again(tiny_served):
    tiny_served.chat(MESSAGES, max_tokens=2)
    tiny_served.chat(MESSAGES, max_tokens=2)
    cached = tiny_served.timings()
    tiny_served.reset()
    tiny_served.chat(MESSAGES, max_tokens=2)
    whole = tiny_served.timings()
    assert cached.prompt_tokens < whole.prompt_tokens == tiny_served.count_tokens(MESSAGES)
    assert whole.prompt_ms > 0 and whole.generated_ms > 0  # the server's own counters


@pytest.mark.model
def test_notebook_06s_guard_runs_on_the_served_profile(tiny_served, tiny_chat, monkeypatch):
    monkeypatch.setenv(ENDPOINT_ENV, tiny_served.endpoint.base_url)
    served = load_guard(llmops_lib.setup(profile="served", quiet=True))
    in_process = ModelGuard(tiny_chat, served.policy)
    assert served.constrained and served.model.path.name == tiny_chat.path.name
    for messages in (conversation("How do I bake bread?"), conversation("Hi", "Hello!")):
        verdict = served.judge(messages)
        assert verdict.problem is None, verdict.raw  # the server obeyed the grammar
        assert verdict.safe == in_process.judge(messages).safe
    served.model.close()
