"""Structured output: the schema sent as response_format, the fail-closed validator, the
measurement loop on the fake chat model, and what the pinned servers really accept."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest
from fakes import FakeChat, FakeSchemaChat
from pydantic import BaseModel

from llmops_lib.core import datasets
from llmops_lib.core.errors import InputError, UnknownNameError
from llmops_lib.engines import endpoint
from llmops_lib.lessons import structured

Answer = structured.AssessmentAnswer
GOOD = '{"label": "no", "reason": "A cheaper aid is proposed."}'


def test_the_schema_allows_only_yes_or_no_and_a_reason():
    schema = structured.response_format(Answer)["json_schema"]["schema"]
    assert schema["properties"]["label"]["enum"] == ["yes", "no"]
    assert schema["required"] == ["label", "reason"] and schema["additionalProperties"] is False
    assert schema["properties"]["reason"]["minLength"] == 1


def test_both_spellings_of_response_format_carry_the_same_schema():
    openai_style = structured.response_format(Answer, "json_schema")
    llama_cpp_style = structured.response_format(Answer, "json_object")
    assert openai_style["type"] == "json_schema" and openai_style["json_schema"]["strict"]
    assert llama_cpp_style == {"type": "json_object", "schema": Answer.model_json_schema()}
    with pytest.raises(UnknownNameError, match="'grammar'.*json_schema, json_object"):
        structured.response_format(Answer, "grammar")
    with pytest.raises(InputError, match="pydantic model class"):
        structured.response_format({"type": "object"})


def test_the_style_follows_the_engine():
    from llmops_lib.engines.llamacpp import LlamaCppModel

    in_process = object.__new__(LlamaCppModel)  # its type is what counts, not its weights
    assert structured.style_for(in_process) == "json_object"
    for name in ("llama_cpp.server", "llama-server"):  # the course's launcher translates
        assert structured.style_for(SimpleNamespace(server=SimpleNamespace(name=name))) == (
            "json_schema"
        )
    assert structured.style_for(SimpleNamespace(server=None)) == "json_schema"  # a remote one


def test_a_valid_reply_parses():
    parsed = structured.parse(Answer, f"  {GOOD}\n")
    assert parsed.ok and parsed.value == Answer(label="no", reason="A cheaper aid is proposed.")


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        (f"```json\n{GOOD}\n```", "Invalid JSON"),  # fenced: a guess would be needed
        (f"Here it is: {GOOD}", "Invalid JSON"),
        (f"{GOOD} Anything else?", "Invalid JSON"),
        ('{"label": "Yes", "reason": "x"}', "label: Input should be 'yes' or 'no'"),
        ('{"label": "maybe", "reason": "x"}', "label"),
        ('{"label": "yes", "reason": ""}', "reason: String should have at least 1 character"),
        ('{"label": "yes"}', "reason: Field required"),
        ('{"label": "yes", "reason": "x", "score": 5}', "score: Extra inputs are not permitted"),
        ('{"label": true, "reason": "x"}', "label"),
        ('{"label": "yes", "reason": 42}', "reason: Input should be a valid string"),
        ('{"label": "yes", "reason": "' + "x" * 161 + '"}', "at most 160 characters"),
        ('{"label": "yes", "reason": "cut off', "Invalid JSON"),  # max_tokens hit
        ("", "Invalid JSON"),
    ],
)
def test_anything_else_fails_closed_and_says_why(reply, problem):
    parsed = structured.parse(Answer, reply)
    assert not parsed.ok and parsed.value is None
    assert problem in parsed.problem


def test_parse_refuses_what_is_not_a_reply():
    with pytest.raises(InputError, match="reply's text"):
        structured.parse(Answer, None)
    with pytest.raises(InputError, match="pydantic model class"):
        structured.parse(dict, GOOD)


def test_ask_sends_the_schema_only_when_constrained():
    chat = FakeSchemaChat([GOOD, "No, because a cheaper aid is proposed."])
    constrained = structured.ask(chat, [{"role": "user", "content": "q"}], Answer, True)
    free = structured.ask(chat, [{"role": "user", "content": "q"}], Answer, False)
    assert chat.calls[0]["response_format"] == structured.response_format(Answer, "json_schema")
    assert chat.calls[1]["response_format"] is None
    assert all(call["temperature"] == 0.0 for call in chat.calls)
    assert constrained.parsed.value.label == "no" and constrained.completion_tokens == 8
    assert not free.parsed.ok and free.reply.startswith("No, because")
    assert constrained.latency_s >= 0


class Judged(BaseModel):
    """Another answer type through the same mechanism (what a judge would use)."""

    score: int


def test_any_answer_type_uses_the_same_mechanism():
    chat = FakeSchemaChat(['{"score": 4}'])
    asked = structured.ask(chat, [{"role": "user", "content": "grade"}], Judged, max_tokens=8)
    assert asked.parsed.value == Judged(score=4)
    sent = chat.calls[0]["response_format"]["json_schema"]
    assert sent["name"] == "Judged" and sent["schema"]["required"] == ["score"]


ROWS = pd.DataFrame(
    {
        "text": ["Recommended.", "Not recommended.", "Empfohlen.", "Abgelehnt."],
        "label": ["positive", "negative", "positive", "negative"],
        "lang": ["en", "en", "de", "de"],
    }
)


def test_measure_asks_every_text_once_per_setting_and_scores_the_replies():
    # Without the schema (first pass): one valid and right, three prose; with it: four
    # valid, three right (the last says yes to a refusal).
    replies = [
        '{"label": "yes", "reason": "It says so."}', "Yes.", "Nein.", "Nein, abgelehnt.",
        '{"label": "yes", "reason": "r"}', '{"label": "no", "reason": "r"}',
        '{"label": "yes", "reason": "r"}', '{"label": "yes", "reason": "r"}',
    ]  # fmt: skip
    chat = FakeSchemaChat(replies)
    results = structured.measure(chat, ROWS, progress=False)
    assert len(results) == 8 and results["schema"].tolist() == [False] * 4 + [True] * 4
    assert results["valid"].tolist() == [True, False, False, False, True, True, True, True]
    assert results["prediction"].tolist()[4:] == ["positive", "negative", "positive", "positive"]
    assert results["correct"].tolist() == [True, False, False, False, True, True, True, False]
    assert results.loc[1, "problem"].startswith("Invalid JSON")
    # German texts get the German question; every request asks for the JSON answer.
    assert "Gutachten: Empfohlen." in chat.calls[2]["messages"][1]["content"]
    assert all('"label"' in call["messages"][1]["content"] for call in chat.calls)
    table = structured.summary(results)
    assert list(table.index) == ["without schema", "with schema"]
    assert table["valid_share"].tolist() == [0.25, 1.0]
    assert table["correct_share"].tolist() == [0.25, 0.75]
    assert table["requests"].tolist() == [4, 4]


def test_an_engine_without_response_format_cannot_be_constrained():
    # FakeChat has exactly the chat contract, like the transformers engine: no grammar.
    question = [{"role": "user", "content": "q"}]
    with pytest.raises(InputError, match="takes no response_format.*constrain=False"):
        structured.ask(FakeChat([GOOD]), question, Answer, constrain=True)
    assert structured.ask(FakeChat([GOOD]), question, Answer, constrain=False).parsed.ok


def test_measure_refuses_bad_arguments():
    with pytest.raises(InputError, match="columns text, label, lang"):
        structured.measure(FakeChat(), ROWS.drop(columns="lang"))
    with pytest.raises(InputError, match="constrain=()"):
        structured.measure(FakeChat(), ROWS, constrain=())
    with pytest.raises(InputError, match="max_tokens=0"):
        structured.ask(FakeChat(), [{"role": "user", "content": "q"}], Answer, max_tokens=0)
    with pytest.raises(InputError, match="prompt language 'fr'"):
        structured.messages("Texte.", "fr")


TWO = datasets.load_assessments().query("set == 'eval'").groupby("label").head(1)


@pytest.mark.model
def test_llama_server_constrains_its_replies_to_the_schema(session, one_thread):
    with session.server("llama-server", n_ctx=1024, **one_thread) as server:
        chat = endpoint.connect(server.base_url, server=server)
        results = structured.measure(chat, TWO, constrain=(True,), max_tokens=64, progress=False)
    assert results["valid"].all(), results["problem"].tolist()


@pytest.mark.model
def test_the_course_llama_cpp_server_takes_openais_spelling(session, one_thread):
    """llama-cpp-python's own server answers OpenAI's json_schema with HTTP 500; the course's
    launcher translates it (llama_cpp_server), so every endpoint gets one spelling."""
    with session.server("llama_cpp.server", n_ctx=1024, **one_thread) as server:
        chat = endpoint.connect(server.base_url, server=server)
        assert structured.style_for(chat) == "json_schema"
        question = structured.messages(TWO.iloc[0].text, TWO.iloc[0].lang)
        asked = structured.ask(chat, question, Answer, max_tokens=64)
    assert asked.parsed.ok, asked.parsed.problem
