"""Conversation with the real tiny model (Gemma 3 270M Q4_K_M on llama.cpp)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from llmops_lib.chat import Conversation, MessageTooLong

SYSTEM = "You are a helpful assistant. Answer in one short sentence."
QUESTIONS = [
    "What is a large language model?",
    "What is retrieval-augmented generation?",
    "Why does a longer prompt cost more?",
    "What have we talked about so far?",
]
N_CTX = 512
REPLY_TOKENS = 8  # short replies keep 50 turns fast; the prompt still fills 512 tokens


@pytest.fixture(scope="module")
def small_chat(session):
    """The tiny model on a deliberately small 512-token context."""
    model = session.chat_model(n_ctx=N_CTX)
    yield model
    model.close()


@pytest.fixture(scope="module")
def long_chat(small_chat):
    """50 turns on the 512-token context (run once, inspected by several tests)."""
    conv = Conversation(small_chat, SYSTEM, max_tokens=REPLY_TOKENS)
    for n in range(50):
        conv.ask(f"{QUESTIONS[n % len(QUESTIONS)]} (question {n + 1})")
    return conv


def prompt_for(conv: Conversation, index: int, first: int) -> list[dict[str, str]]:
    """The messages turn `index` would have been sent with history turns[first:index]."""
    messages = [{"role": "system", "content": conv.system}]
    for turn in conv.turns[first:index]:
        messages += [
            {"role": "user", "content": turn.user},
            {"role": "assistant", "content": turn.assistant},
        ]
    return messages + [{"role": "user", "content": conv.turns[index].user}]


def test_fifty_turns_on_a_small_context_never_overflow(long_chat, small_chat):
    assert len(long_chat.turns) == 50
    assert long_chat.dropped, "50 turns on 512 tokens must have needed trimming"
    assert long_chat.messages[0] == {"role": "system", "content": SYSTEM}
    assert small_chat.prompt_text(long_chat.messages).startswith(
        f"<bos><start_of_turn>user\n{SYSTEM}\n\n"
    )
    figures = long_chat.figures()
    assert (figures["prompt_tokens"] + REPLY_TOKENS <= N_CTX).all()
    assert (figures["generated_tokens"] <= REPLY_TOKENS).all()


def test_trimming_drops_the_oldest_whole_turns_and_no_more(long_chat, small_chat):
    dropped_in_order = [n for turn in long_chat.turns for n in turn.dropped]
    assert dropped_in_order == list(range(1, long_chat.first_kept + 1))  # oldest first
    assert long_chat.dropped == long_chat.turns[: long_chat.first_kept]
    for i, turn in enumerate(long_chat.turns):
        first = i - turn.history_turns
        messages = prompt_for(long_chat, i, first)
        # what was recorded is what was sent: whole user/assistant pairs after the system
        assert small_chat.count_tokens(messages) == turn.prompt_tokens
        assert [m["role"] for m in messages[1:-1]] == ["user", "assistant"] * turn.history_turns
        if first > 0:  # keeping one more turn would not have fitted
            wider = prompt_for(long_chat, i, first - 1)
            assert small_chat.count_tokens(wider) + REPLY_TOKENS > N_CTX


def test_engine_reuses_the_cached_prefix_when_nothing_was_dropped(long_chat):
    figures = long_chat.figures()
    grown = figures[(figures["dropped"] == 0) & (figures["history_turns"] > 0)]
    assert not grown.empty
    assert (grown["evaluated_tokens"] < grown["prompt_tokens"]).all()


def test_stream_gives_the_same_text_as_ask_under_greedy(small_chat, capsys):
    asked = Conversation(small_chat, SYSTEM, max_tokens=24)
    streamed = Conversation(small_chat, SYSTEM, max_tokens=24)
    for question in QUESTIONS[:2]:
        reply = asked.ask(question)
        assert asked.turns[-1].generated_tokens == asked.last_response["usage"]["completion_tokens"]
        pieces = list(streamed.stream(question))
        assert len(pieces) > 1  # it really arrived piece by piece
        assert "".join(pieces) == reply
    assert streamed.messages == asked.messages
    out = capsys.readouterr().out
    assert out.startswith("assistant: ")
    assert asked.turns[-1].assistant in out
    assert streamed.turns[-1].streamed and not asked.turns[-1].streamed
    assert (streamed.figures()["ttft_s"] <= streamed.figures()["total_s"]).all()


def test_save_and_load_round_trip_exactly(long_chat, small_chat, tmp_path):
    path = long_chat.save(tmp_path / "chat.json")
    loaded = Conversation.load(path, small_chat)
    assert loaded.to_dict() == long_chat.to_dict()
    assert loaded.messages == long_chat.messages
    assert loaded.dropped == long_chat.dropped
    pd.testing.assert_frame_equal(loaded.figures(), long_chat.figures())
    with pytest.raises(FileExistsError, match="chat.json"):
        long_chat.save(path)


def test_load_rejects_a_file_that_is_not_a_conversation(small_chat, tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"messages": []}))
    with pytest.raises(ValueError, match="other.json.*not a saved conversation"):
        Conversation.load(path, small_chat)


def test_a_message_that_cannot_fit_says_how_many_tokens_it_has_and_fit(small_chat):
    conv = Conversation(small_chat, SYSTEM, max_tokens=64)
    conv.ask(QUESTIONS[0])
    before = conv.to_dict()
    text = "word " * 600
    with pytest.raises(MessageTooLong, match=r"has \d+ tokens, but at most \d+ fit") as err:
        conv.ask(text)
    assert err.value.tokens == len(small_chat.tokenize(text.strip()))
    frame = small_chat.count_tokens(
        [{"role": "system", "content": SYSTEM}] + [{"role": "user", "content": ""}]
    )
    assert err.value.fits == N_CTX - 64 - frame
    with pytest.raises(MessageTooLong):
        list(conv.stream(text, echo=False))
    assert conv.to_dict() == before  # the history survives the refused message


def test_system_prompt_and_reply_budget_must_fit_the_context(small_chat):
    with pytest.raises(ValueError, match=r"max_tokens=600.*n_ctx=512"):
        Conversation(small_chat, SYSTEM, max_tokens=600)
    with pytest.raises(ValueError, match="system prompt is empty"):
        Conversation(small_chat, "  ")


def test_conversation_runs_on_the_transformers_backend(capsys):
    hf = pytest.importorskip("llmops_lib.hf", reason="no transformers backend (issue 5) yet")
    from llmops_lib import catalog

    with hf.load(catalog.get("gemma-3-270m"), "fp32", n_ctx=96) as model:
        conv = Conversation(model, SYSTEM, max_tokens=REPLY_TOKENS)
        replies = [conv.ask(q) for q in QUESTIONS[:3]]
        streamed = "".join(conv.stream(QUESTIONS[3]))
    assert conv.dropped, "four turns on 96 tokens must have needed trimming"
    assert conv.messages[0] == {"role": "system", "content": SYSTEM}
    assert [t.assistant for t in conv.turns] == replies + [streamed]
    figures = conv.figures()
    assert (figures["prompt_tokens"] + REPLY_TOKENS <= 96).all()
    # transformers keeps no cache between calls: it evaluates the whole prompt every turn
    assert (figures["evaluated_tokens"] == figures["prompt_tokens"]).all()
    assert capsys.readouterr().out.startswith("assistant: ")
