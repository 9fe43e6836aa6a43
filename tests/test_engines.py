"""The engine registry: one place per backend name, and every real engine keeps the contract
that tests/test_fakes.py checks the fake against."""

from __future__ import annotations

import inspect
import math

import pytest

from llmops_lib.core import backend
from llmops_lib.core.backend import reply_text
from llmops_lib.core.errors import InputError, UnknownNameError
from llmops_lib.engines import registry
from llmops_lib.planning import catalog

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name one colour."},
]
# The session-scoped model of tests/conftest.py that stands for each chat engine.
LOADED = {"llamacpp": "tiny_chat", "transformers": "tiny_hf", "served": "tiny_served"}
CHAT_ENGINES = [name for name, engine in registry.ENGINES.items() if engine.load is not None]


def _members(protocol: type) -> dict[str, object]:
    return {
        name: inspect.getattr_static(protocol, name)
        for klass in protocol.__mro__
        if klass.__module__ == backend.__name__
        for name in vars(klass)
        if not name.startswith("_")
    }


def test_every_chat_engine_is_checked_here():
    assert sorted(CHAT_ENGINES) == sorted(LOADED), "add the new engine's loaded model to LOADED"


def test_an_unknown_backend_or_server_is_named_with_the_known_ones():
    with pytest.raises(UnknownNameError, match="backend 'vllm'. Valid: llamacpp, transformers"):
        registry.engine("vllm")
    with pytest.raises(UnknownNameError, match="server engine 'tgi'. Valid: llama_cpp.server"):
        registry.check_server("tgi")


def test_an_option_is_refused_by_name_and_engine_before_the_files_are_found(monkeypatch):
    engine = registry.engine("transformers")
    monkeypatch.setattr(registry.provision, "hf_dir", pytest.fail)
    with pytest.raises(InputError, match="transformers engine option 'n_threads'. Valid: n_ctx."):
        engine.model(catalog.get("smollm2-135m-instruct"), None, "fp32", {"n_threads": 2})


def test_an_engine_without_a_loader_says_what_to_do_instead():
    with pytest.raises(InputError, match="setfit, which is not a chat engine.*session.train"):
        registry.engine("setfit").model(catalog.get("all-minilm-l6-v2"), None, None, {})
    with pytest.raises(InputError, match="llamacpp, which trains no classifier"):
        registry.engine("llamacpp").trained(catalog.get("smollm2-135m-instruct"), ["a"], ["b"])


def test_a_training_option_is_refused_by_name_before_the_files_are_found(monkeypatch):
    monkeypatch.setattr(registry.provision, "encoder_path", pytest.fail)
    with pytest.raises(UnknownNameError, match="setfit training option 'iteration'.*iterations"):
        registry.engine("setfit").trained(
            catalog.get("all-minilm-l6-v2"), ["a"], ["b"], iteration=2
        )


@pytest.mark.model
@pytest.mark.parametrize("name", CHAT_ENGINES)
def test_a_real_engine_keeps_the_local_model_contract(request, name):
    model = request.getfixturevalue(LOADED[name])
    for member, expected in _members(backend.LocalModel).items():
        ours = inspect.getattr_static(type(model), member)
        if isinstance(expected, property):
            assert isinstance(ours, property), f"{name}: {member} is not a property"
            continue
        want = [(n, p.default) for n, p in inspect.signature(expected).parameters.items()]
        got = [(n, p.default) for n, p in inspect.signature(ours).parameters.items()]
        assert got[: len(want)] == want, f"{name}.{member}: {got} does not start with {want}"
    for attribute in backend.LocalModel.__annotations__:  # path, load_s
        assert hasattr(model, attribute), f"{name}: no {attribute}"
    assert model.path.exists() and model.load_s > 0
    reply = model.chat(MESSAGES, max_tokens=3)
    assert reply["usage"]["completion_tokens"] <= 3 and isinstance(reply_text(reply), str)
    text, finish = model.complete(model.prompt_text(MESSAGES), max_tokens=3)
    assert isinstance(text, str) and finish in ("stop", "length")
    # a grammar holds the answer to its one sentence, where the engine obeys grammars
    constrained, _ = model.complete(model.prompt_text(MESSAGES), 4, grammar='root ::= "blue"')
    assert (constrained == "blue") == model.grammars, (name, constrained)
    assert reply["usage"]["prompt_tokens"] == model.count_tokens(MESSAGES)
    # llama.cpp counts the first token in its prompt pass; the others count it as decoded
    assert 1 <= model.timings().generated_tokens <= reply["usage"]["completion_tokens"]
    share = model.gpu_share()  # NaN: a server that does not say
    assert model.weight_bytes() > 0 and (0 <= share <= 1 or math.isnan(share))
    with pytest.raises(InputError, match="max_tokens=0"):
        model.chat(MESSAGES, max_tokens=0)
