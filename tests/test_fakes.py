"""The fakes the unit tests stand on: they must keep the chat contract, and fail like it."""

from __future__ import annotations

import inspect

import pytest
from fakes import FakeChat

from llmops_lib.core import backend
from llmops_lib.core.backend import chunk_text, reply_text

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name one colour."},
]


def _members(protocol: type) -> dict[str, object]:
    names = {
        name
        for klass in protocol.__mro__
        if klass.__module__ == backend.__name__
        for name in vars(klass)
        if not name.startswith("_")
    }
    return {name: inspect.getattr_static(protocol, name) for name in names}


def test_fake_has_every_member_of_the_scoring_protocol_with_its_parameters():
    members = _members(backend.ScoringModel)
    assert {"chat", "timings", "close", "n_ctx", "count_tokens", "next_token_probs"} <= set(members)
    fake = FakeChat()
    for name, member in members.items():
        ours = inspect.getattr_static(FakeChat, name)
        if isinstance(member, property):
            assert isinstance(ours, property), name
            continue
        expected = list(inspect.signature(member).parameters.items())
        got = list(inspect.signature(ours).parameters.items())
        assert [(n, p.default) for n, p in got] == [(n, p.default) for n, p in expected], name
        assert callable(getattr(fake, name))
    assert all(hasattr(fake, name) for name in backend.LocalModel.__annotations__)


def test_tokens_are_words_and_the_template_adds_its_markers():
    fake = FakeChat()
    assert fake.prompt_text(MESSAGES) == (
        "<s>\n<|system|> Be brief. <|end|>\n<|user|> Name one colour. <|end|>\n<|assistant|>"
    )
    assert fake.count_tokens(MESSAGES) == 1 + (1 + 2 + 1) + (1 + 3 + 1) + 1
    with pytest.raises(ValueError, match="not a chat message"):
        fake.prompt_text([{"role": "bot", "content": "x"}])
    with pytest.raises(ValueError, match=r"messages\[0\]\['role'\] is 'bot'"):
        fake.chat([{"role": "bot", "content": "x"}])
    with pytest.raises(ValueError, match="max_tokens=0"):
        fake.chat(MESSAGES, max_tokens=0)
    assert fake.calls == []


def test_chat_cuts_the_reply_at_max_tokens_and_counts_usage():
    fake = FakeChat(["one two three four", "five"])
    cut = fake.chat(MESSAGES, max_tokens=3)
    assert reply_text(cut) == "one two three"
    assert cut["choices"][0]["finish_reason"] == "length"
    prompt = fake.count_tokens(MESSAGES)
    assert cut["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": 3,
        "total_tokens": prompt + 3,
    }
    whole = fake.chat(MESSAGES)
    assert reply_text(whole) == "five" and whole["choices"][0]["finish_reason"] == "stop"
    with pytest.raises(AssertionError, match="used up"):
        fake.chat(MESSAGES)


def test_a_prompt_over_the_context_is_refused_like_llama_cpp():
    fake = FakeChat(n_ctx=10)
    with pytest.raises(ValueError, match=r"Requested tokens \(11\) exceed context window of 10"):
        fake.chat(MESSAGES)


def test_stream_chunks_start_with_the_role_and_add_up_to_the_reply():
    fake = FakeChat(lambda messages: "a b c")
    chunks = list(fake.chat(MESSAGES, stream=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert "".join(chunk_text(c) for c in chunks) == "a b c"
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 4 + ["stop"]
    assert fake.timings().generated_tokens == 3


def test_cached_prefix_is_reused_until_reset():
    fake = FakeChat(["x"] * 3)
    fake.chat(MESSAGES)
    first = fake.timings()
    assert first.prompt_tokens == fake.count_tokens(MESSAGES)
    longer = [*MESSAGES, {"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]
    fake.chat(longer)
    reused = fake.count_tokens(MESSAGES) + 1  # the first prompt and the reply it generated
    assert fake.timings().prompt_tokens == fake.count_tokens(longer) - reused
    fake.reset()
    fake.chat(longer)
    assert fake.timings().prompt_tokens == fake.count_tokens(longer)


def test_next_token_probs_sum_first_tokens_and_refuse_shared_ones():
    fake = FakeChat(token_probs={"Yes": 0.5, "yes": 0.1, "No": 0.3})
    probs = fake.next_token_probs(MESSAGES, {"pos": ["Yes", " yes"], "neg": ["No", "Nope"]})
    assert probs == pytest.approx({"pos": 0.6, "neg": 0.3})
    with pytest.raises(ValueError, match="same token"):
        fake.next_token_probs(MESSAGES, {"a": ["Yes"], "b": [" Yes"]})
    with pytest.raises(ValueError, match="not a distribution"):
        FakeChat(token_probs={"Yes": 0.9, "No": 0.2}).next_token_probs(MESSAGES, {"a": ["Yes"]})


def test_a_closed_fake_refuses_to_chat():
    with FakeChat() as fake:
        fake.chat(MESSAGES)
    with pytest.raises(RuntimeError, match="closed"):
        fake.chat(MESSAGES)


@pytest.mark.model
def test_fake_answers_in_the_same_shape_as_the_real_llama_cpp_model(tiny_chat):
    def shape(value):
        if isinstance(value, dict):
            return {k: shape(v) for k, v in value.items()}
        if isinstance(value, list):
            return [shape(v) for v in value[:1]]
        return type(value).__name__

    fake = FakeChat()
    assert shape(fake.chat(MESSAGES, max_tokens=4)) == shape(tiny_chat.chat(MESSAGES, max_tokens=4))
    real = list(tiny_chat.chat(MESSAGES, max_tokens=4, stream=True))
    ours = list(fake.chat(MESSAGES, max_tokens=4, stream=True))
    for index in (0, 1, -1):  # the role chunk, a content chunk, the finishing chunk
        assert shape(ours[index]) == shape(real[index]), index
