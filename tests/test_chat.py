"""Conversation: history, token budget, trimming, streaming and saved turns.

The logic runs on the fake model of tests/fakes.py (one token per word, milliseconds).
The real tiny model (SmolLM2 135M Instruct) checks what only an engine shows: its chat template and
tokenizer under trimming, llama.cpp's reuse of the cached prefix, transformers without one.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from fakes import FakeChat

from llmops_lib.core.errors import InputError
from llmops_lib.lessons.nb05.chat import Conversation, MessageTooLong

SYSTEM = "You are a helpful assistant. Answer in one short sentence."
QUESTIONS = [
    "What is a large language model?",
    "What is retrieval-augmented generation?",
    "Why does a longer prompt cost more?",
    "What have we talked about so far?",
]
N_CTX = 512
REPLY_TOKENS = 8  # short replies; the prompt still fills the context


@pytest.fixture
def fake():
    """A fake model on a 512-token context; it repeats the user's message back."""
    return FakeChat(n_ctx=N_CTX)


def chat_for_turns(model, turns: int) -> Conversation:
    conv = Conversation(model, SYSTEM, max_tokens=REPLY_TOKENS)
    for n in range(turns):
        conv.ask(f"{QUESTIONS[n % len(QUESTIONS)]} (question {n + 1})")
    return conv


@pytest.fixture
def long_chat(fake):
    """50 turns on the 512-token context."""
    return chat_for_turns(fake, 50)


def prompt_for(conv: Conversation, index: int, first: int) -> list[dict[str, str]]:
    """The messages turn `index` would have been sent with history turns[first:index]."""
    messages = [{"role": "system", "content": conv.system}]
    for turn in conv.turns[first:index]:
        messages += [
            {"role": "user", "content": turn.user},
            {"role": "assistant", "content": turn.assistant},
        ]
    return messages + [{"role": "user", "content": conv.turns[index].user}]


def check_trimming(conv: Conversation, model) -> None:
    """Every turn was sent whole user/assistant pairs after the system prompt, dropping the
    oldest first and no more than needed, and its prompt left room for the reply."""
    dropped_in_order = [n for turn in conv.turns for n in turn.dropped]
    assert dropped_in_order == list(range(1, conv.first_kept + 1))  # oldest first
    assert conv.dropped == conv.turns[: conv.first_kept]
    for i, turn in enumerate(conv.turns):
        first = i - turn.history_turns
        messages = prompt_for(conv, i, first)
        assert model.count_tokens(messages) == turn.prompt_tokens
        assert turn.prompt_tokens + conv.max_tokens <= model.n_ctx
        assert [m["role"] for m in messages[1:-1]] == ["user", "assistant"] * turn.history_turns
        if first > 0:  # keeping one more turn would not have fitted
            wider = prompt_for(conv, i, first - 1)
            assert model.count_tokens(wider) + conv.max_tokens > model.n_ctx


def test_fifty_turns_on_a_small_context_never_overflow(long_chat, fake):
    assert len(long_chat.turns) == 50
    assert long_chat.dropped, "50 turns on 512 tokens must have needed trimming"
    assert long_chat.messages[0] == {"role": "system", "content": SYSTEM}
    assert fake.prompt_text(long_chat.messages).startswith(f"<s>\n<|system|> {SYSTEM} <|end|>")
    figures = long_chat.figures()
    assert (figures["prompt_tokens"] + REPLY_TOKENS <= N_CTX).all()
    assert (figures["generated_tokens"] <= REPLY_TOKENS).all()
    assert (figures["generated_tokens"] == REPLY_TOKENS).any()  # replies were cut at the budget


def test_trimming_drops_the_oldest_whole_turns_and_no_more(long_chat, fake):
    check_trimming(long_chat, fake)
    # what was recorded is what the model was sent, with the conversation's settings
    assert len(fake.calls) == 50
    for i, (turn, call) in enumerate(zip(long_chat.turns, fake.calls, strict=True)):
        assert call["messages"] == prompt_for(long_chat, i, i - turn.history_turns)
        assert (call["max_tokens"], call["temperature"], call["stream"]) == (8, 0.0, False)
        assert turn.assistant == " ".join(f"You said: {turn.user}".split()[:REPLY_TOKENS])


def test_evaluated_tokens_are_what_the_engine_reports(long_chat):
    figures = long_chat.figures()
    assert figures.loc[1, "evaluated_tokens"] == figures.loc[1, "prompt_tokens"]  # cold cache
    grown = figures[(figures["dropped"] == 0) & (figures["history_turns"] > 0)]
    assert not grown.empty
    assert (grown["evaluated_tokens"] < grown["prompt_tokens"]).all()


def test_stream_gives_the_same_text_and_history_as_ask(capsys):
    asked = Conversation(FakeChat(n_ctx=N_CTX), SYSTEM, max_tokens=24)
    streamed = Conversation(FakeChat(n_ctx=N_CTX), SYSTEM, max_tokens=24)
    for question in QUESTIONS[:2]:
        reply = asked.ask(question)
        assert asked.turns[-1].generated_tokens == asked.last_response["usage"]["completion_tokens"]
        pieces = list(streamed.stream(question))
        assert len(pieces) > 1  # it really arrived piece by piece
        assert "".join(pieces) == reply
    assert streamed.messages == asked.messages
    assert streamed.model.calls[-1]["stream"] and not asked.model.calls[-1]["stream"]
    out = capsys.readouterr().out
    assert out.startswith("assistant: ")
    assert asked.turns[-1].assistant in out
    assert streamed.turns[-1].streamed and not asked.turns[-1].streamed
    for conv in (asked, streamed):
        figures = conv.figures()
        assert (figures["ttft_s"] >= 0).all()
        assert (figures["ttft_s"] <= figures["total_s"]).all()


def test_save_and_load_round_trip_exactly(long_chat, fake, tmp_path):
    path = long_chat.save(tmp_path / "chat.json")
    loaded = Conversation.load(path, fake)
    assert loaded.to_dict() == long_chat.to_dict()
    assert loaded.messages == long_chat.messages
    assert loaded.dropped == long_chat.dropped
    pd.testing.assert_frame_equal(loaded.figures(), long_chat.figures())
    with pytest.raises(FileExistsError, match="chat.json"):
        long_chat.save(path)


def test_load_rejects_a_file_that_is_not_a_conversation(fake, tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"messages": []}))
    with pytest.raises(ValueError, match="other.json.*not a saved conversation"):
        Conversation.load(path, fake)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("", "not a message"),
        ("  \n", "not a message"),
        (None, "text is NoneType"),
        ("\ud800", "lone"),
    ],
)
def test_a_turn_needs_a_message(fake, text, named):
    conv = Conversation(fake, SYSTEM, max_tokens=REPLY_TOKENS)
    with pytest.raises(InputError, match=named):
        conv.ask(text)
    with pytest.raises(InputError, match=named):
        list(conv.stream(text, echo=False))
    assert conv.turns == [] and fake.calls == []  # nothing was sent, nothing recorded


def _damage(saved: dict, change) -> dict:
    damaged = json.loads(json.dumps(saved))
    change(damaged)
    return damaged


DAMAGES = {
    "no system": (lambda d: d.pop("system"), r"lacks \['system'\]"),
    "turns not a list": (lambda d: d.update(turns={}), "turns are not a list"),
    "a turn without its tokens": (
        lambda d: d["turns"][0].pop("prompt_tokens"),
        r"turns\[0\] does not have exactly the fields",
    ),
    "a token count as text": (
        lambda d: d["turns"][1].update(prompt_tokens="12"),
        r"turns\[1\]\['prompt_tokens'\] is '12', not int",
    ),
    "a reply that is not text": (
        lambda d: d["turns"][0].update(assistant=None),
        r"\['assistant'\] is None, not str",
    ),
    "first_kept past the end": (lambda d: d.update(first_kept=99), "first_kept=99"),
    "first_kept negative": (lambda d: d.update(first_kept=-1), "first_kept=-1"),
    "max_tokens as text": (lambda d: d.update(max_tokens="8"), "max_tokens='8'"),
}


@pytest.mark.parametrize(("change", "named"), DAMAGES.values(), ids=DAMAGES)
def test_load_checks_every_field_of_the_file(fake, tmp_path, change, named):
    saved = chat_for_turns(fake, 3).to_dict()
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(_damage(saved, change)))
    with pytest.raises(InputError, match=named):
        Conversation.load(path, fake)


def test_load_names_a_file_that_is_not_json(fake, tmp_path):
    path = tmp_path / "chat.json"
    path.write_text('{"format": "llmops-conversation/1", "turns": [')  # cut off
    with pytest.raises(InputError, match=r"chat\.json.*cannot be read as a saved conversation"):
        Conversation.load(path, fake)


def test_a_message_that_cannot_fit_says_how_many_tokens_it_has_and_fit(fake):
    conv = Conversation(fake, SYSTEM, max_tokens=64)
    conv.ask(QUESTIONS[0])
    before = conv.to_dict()
    text = "word " * 600
    with pytest.raises(MessageTooLong, match=r"has 600 tokens, but at most \d+ fit") as err:
        conv.ask(text)
    assert err.value.tokens == len(fake.tokenize(text.strip()))
    frame = fake.count_tokens(
        [{"role": "system", "content": SYSTEM}] + [{"role": "user", "content": ""}]
    )
    assert err.value.fits == N_CTX - 64 - frame
    with pytest.raises(MessageTooLong):
        list(conv.stream(text, echo=False))
    assert conv.to_dict() == before  # the history survives the refused message
    assert len(fake.calls) == 1  # the refused message never reached the model


def test_system_prompt_and_reply_budget_must_fit_the_context(fake):
    with pytest.raises(ValueError, match=r"max_tokens=600.*n_ctx=512"):
        Conversation(fake, SYSTEM, max_tokens=600)
    with pytest.raises(ValueError, match="system prompt is empty"):
        Conversation(fake, "  ")


# --- the real engines ------------------------------------------------------------------


@pytest.mark.model
def test_trimming_with_the_models_template_and_tokenizer_on_llama_cpp(session, one_thread):
    with session.model(n_ctx=256, **one_thread) as model:
        conv = chat_for_turns(model, 10)
        assert conv.dropped, "10 turns on 256 tokens must have needed trimming"
        # the system prompt survives every trim, as the first turn
        assert model.prompt_text(conv.messages).startswith(f"<|im_start|>system\n{SYSTEM}")
        check_trimming(conv, model)
    figures = conv.figures()
    assert (figures["generated_tokens"] <= REPLY_TOKENS).all()
    # llama.cpp reuses the cached prefix of the previous prompt when nothing was dropped
    grown = figures[(figures["dropped"] == 0) & (figures["history_turns"] > 0)]
    assert not grown.empty
    assert (grown["evaluated_tokens"] < grown["prompt_tokens"]).all()


@pytest.mark.model
def test_conversation_runs_on_the_transformers_backend(session, capsys):
    with session.model("classifier", n_ctx=96) as model:
        conv = Conversation(model, SYSTEM, max_tokens=REPLY_TOKENS)
        replies = [conv.ask(q) for q in QUESTIONS[:3]]
        streamed = "".join(conv.stream(QUESTIONS[3]))
    assert conv.dropped, "four turns on 96 tokens must have needed trimming"
    assert conv.messages[0] == {"role": "system", "content": SYSTEM}
    assert [t.assistant for t in conv.turns] == replies + [streamed]
    figures = conv.figures()
    assert (figures["prompt_tokens"] + REPLY_TOKENS <= 96).all()
    # the last turn's KV cache serves the next prompt's shared prefix, as llama.cpp's does
    assert (figures["evaluated_tokens"] <= figures["prompt_tokens"]).all()
    grown = figures[(figures["dropped"] == 0) & (figures["history_turns"] > 0)]
    assert not grown.empty
    assert (grown["evaluated_tokens"] < grown["prompt_tokens"]).all()
    assert capsys.readouterr().out.startswith("assistant: ")


def test_figures_say_which_replies_used_their_whole_budget(fake):
    conv = Conversation(fake, SYSTEM, max_tokens=REPLY_TOKENS)
    conv.ask("Short question?")  # the fake echoes it: fewer words than the budget
    conv.ask(" ".join(["word"] * (3 * REPLY_TOKENS)))  # echoed, cut at the budget
    figures = conv.figures()
    assert figures["hit_max_tokens"].tolist() == [False, True]
    assert figures.loc[2, "generated_tokens"] == REPLY_TOKENS
