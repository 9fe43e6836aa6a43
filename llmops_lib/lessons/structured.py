"""Answers a program can parse: a JSON schema sent as the OpenAI API's `response_format`,
and a fail-closed validator (pydantic) for whatever comes back.

An answer is a pydantic model: `AssessmentAnswer` is the assessment task's
`{"label": "yes" | "no", "reason": "..."}`. `response_format()` turns a model into what a
server needs to constrain its sampling to the schema (llama.cpp compiles it into a
grammar); `parse()` accepts exactly one JSON object that validates, and nothing else: no
code fences, no text around it, no extra keys, no guessing. `ask()` sends one request and
parses its reply, so any answer type (a judge's score, a guard's verdict) can use the same
mechanism with a model of its own; `measure()` runs the assessments with and without the
schema and `summary()` gives the share of replies that validate and what the schema costs
in time.

Two spellings of `response_format` are in use. OpenAI's
`{"type": "json_schema", "json_schema": {"name": ..., "schema": ...}}` is accepted by
llama-server, vLLM, the OpenAI API, the course's service and the course's launcher of
`llama_cpp.server` (which translates it); llama-cpp-python itself (the stock server and the
in-process `Llama`, 0.3.36) refuses it (HTTP 500: "Input should be 'text' or 'json_object'")
and takes `{"type": "json_object", "schema": ...}` instead. `style_for()` picks the one an
engine of the course understands.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..core.backend import ChatBackend, Message, reply_text
from ..core.errors import InputError, check_columns, lookup, unknown, whole
from ..core.progress import bar
from .classify import NEGATIVE, POSITIVE, PROMPTS

STYLES = ("json_schema", "json_object")


class AssessmentAnswer(BaseModel):
    """The assessment task's answer: does the assessment recommend the requested aid?"""

    model_config = ConfigDict(extra="forbid", strict=True)

    label: Literal["yes", "no"]
    # One sentence; the bound also lets a grammar close the string instead of running on.
    reason: str = Field(min_length=1, max_length=160)


LABELS = {"yes": POSITIVE, "no": NEGATIVE}  # the answer's label -> the course's labels

# The assessment question of classify.PROMPTS, asking for the JSON answer instead of Yes/No.
QUESTIONS = {
    "en": (
        "Does the following assessment give a positive recommendation for the requested "
        'aid? Answer with one JSON object and nothing else, with the keys "label" ("yes" '
        'or "no") and "reason" (why, in one short sentence).\n\nAssessment: {text}'
    ),
    "de": (
        "Enthält das folgende Gutachten eine positive Empfehlung für das beantragte "
        "Hilfsmittel? Antworte mit genau einem JSON-Objekt und sonst nichts, mit den "
        'Schlüsseln "label" ("yes" oder "no") und "reason" (warum, in einem kurzen Satz).'
        "\n\nGutachten: {text}"
    ),
}


def _check_answer(answer: object) -> type[BaseModel]:
    if not (isinstance(answer, type) and issubclass(answer, BaseModel)):
        raise InputError(
            f"answer={answer!r}: needs a pydantic model class (a subclass of BaseModel), "
            "e.g. structured.AssessmentAnswer."
        )
    return answer


def response_format(answer: type[BaseModel], style: str = "json_schema") -> dict[str, Any]:
    """The `response_format` that constrains a server's reply to `answer`'s JSON schema,
    in OpenAI's spelling ("json_schema") or llama-cpp-python's ("json_object")."""
    schema = _check_answer(answer).model_json_schema()
    if style == "json_schema":
        return {
            "type": "json_schema",
            "json_schema": {"name": answer.__name__, "schema": schema, "strict": True},
        }
    if style == "json_object":
        return {"type": "json_object", "schema": schema}
    raise unknown(style, "response_format style", STYLES)


def style_for(chat: object) -> str:
    """The `response_format` spelling `chat` understands: llama-cpp-python's for an in-process
    model that obeys grammars (it turns the schema into one), OpenAI's for every endpoint
    (llama-server, the course's llama_cpp.server, vLLM)."""
    return "json_object" if getattr(chat, "grammars", False) else "json_schema"


@dataclass(frozen=True)
class Parsed:
    """A reply read fail-closed: the validated answer, or None and what was wrong."""

    value: BaseModel | None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.value is not None


def parse(answer: type[BaseModel], text: str) -> Parsed:
    """`text` as an `answer` when it is exactly one JSON object that validates (surrounding
    whitespace allowed); anything else is no answer, with the reason in `problem`."""
    _check_answer(answer)
    if not isinstance(text, str):
        raise InputError(f"text is a {type(text).__name__}; pass the reply's text.")
    try:
        return Parsed(answer.model_validate_json(text.strip()))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(map(str, first["loc"]))
        return Parsed(None, f"{where}: {first['msg']}" if where else first["msg"])


@dataclass(frozen=True)
class Asked:
    """One request: the parsed reply, its text, the wall time, the tokens generated and the
    engine's whole response (its token log-probabilities, when asked for, are in there)."""

    parsed: Parsed
    reply: str
    latency_s: float
    completion_tokens: int
    response: dict[str, Any] | None = None


def ask(
    chat: ChatBackend,
    messages: list[Message],
    answer: type[BaseModel],
    constrain: bool = True,
    max_tokens: int = 64,
    style: str | None = None,
    **options: Any,
) -> Asked:
    """Send `messages` to `chat` (an endpoint or an in-process model), with `answer`'s
    schema as `response_format` when `constrain`, greedy; parse the reply fail-closed.
    Other `options` go to chat() as they are (e.g. `logprobs=True, top_logprobs=20`).

    The schema does not make a reply valid by itself: a reply cut off at `max_tokens` is
    unfinished JSON and fails like any other invalid one.
    """
    _check_answer(answer)
    whole("max_tokens", max_tokens)
    if "response_format" in options:
        raise InputError("ask() sets response_format from `answer`; pass constrain= instead.")
    if constrain:
        _check_takes_response_format(chat)
        options["response_format"] = response_format(answer, style or style_for(chat))
    start = time.perf_counter()
    response = chat.chat(messages, max_tokens=max_tokens, temperature=0.0, **options)
    latency = time.perf_counter() - start
    text = reply_text(response)
    tokens = (response.get("usage") or {}).get("completion_tokens") or 0
    return Asked(parse(answer, text), text, latency, tokens, response)


def _check_takes_response_format(chat: object) -> None:
    """Refuse, before any request, an engine whose chat() cannot take a response_format
    (the transformers engine: it has no grammar to constrain with)."""
    params = inspect.signature(chat.chat).parameters.values()
    if not any(p.name == "response_format" or p.kind is p.VAR_KEYWORD for p in params):
        raise InputError(
            f"{type(chat).__name__}.chat() takes no response_format, so its replies cannot be "
            "constrained to a schema; use a llama.cpp model or an OpenAI-compatible endpoint, "
            "or pass constrain=False and rely on the validator alone."
        )


def messages(text: str, lang: str) -> list[Message]:
    """The assessment question (classify's system prompt) asking for an AssessmentAnswer."""
    question = lookup(QUESTIONS, lang, "prompt language")
    if not isinstance(text, str):
        raise InputError(f"text is a {type(text).__name__}; pass the assessment as a string.")
    return [
        {"role": "system", "content": PROMPTS[lang]["system"]},
        {"role": "user", "content": question.format(text=text)},
    ]


def measure(
    chat: ChatBackend,
    data: pd.DataFrame,
    constrain: tuple[bool, ...] = (False, True),
    max_tokens: int = 64,
    progress: bool = True,
) -> pd.DataFrame:
    """Ask every assessment in `data` (columns text, label, lang) once per setting of
    `constrain`: one row per request with whether the reply validated, its label mapped to
    the course's (positive/negative, empty when invalid), whether that is right, the
    problem when invalid, the wall time and the tokens generated."""
    check_columns("data", data, ("text", "label", "lang"))
    settings = [bool(c) for c in constrain]
    if not settings:
        raise InputError("constrain=(): needs at least one setting, e.g. (False, True).")
    work = [(c, row) for c in settings for row in data.itertuples()]
    rows = []
    for constrained, row in bar(work, desc="structured", disable=not progress):
        asked = ask(chat, messages(row.text, row.lang), AssessmentAnswer, constrained, max_tokens)
        value = asked.parsed.value
        prediction = LABELS[value.label] if value is not None else ""
        rows.append(
            {
                "lang": row.lang,
                "truth": row.label,
                "schema": constrained,
                "valid": asked.parsed.ok,
                "prediction": prediction,
                "correct": prediction == row.label,
                "problem": asked.parsed.problem or "",
                "latency_s": asked.latency_s,
                "completion_tokens": asked.completion_tokens,
                "reply": asked.reply,
            }
        )
    return pd.DataFrame(rows)


def summary(results: pd.DataFrame) -> pd.DataFrame:
    """Per setting (with or without the schema): requests, the share of replies that
    validate, the share that validate and are right, the median wall time, tokens and
    time per token (the schema changes how long answers are, so compare both)."""
    check_columns(
        "results", results, ("schema", "valid", "correct", "latency_s", "completion_tokens")
    )
    grouped = results.groupby("schema")
    per_token = results["latency_s"] / results["completion_tokens"].where(
        results["completion_tokens"] > 0
    )
    table = pd.DataFrame(
        {
            "requests": grouped.size(),
            "valid_share": grouped["valid"].mean(),
            "correct_share": grouped["correct"].mean(),
            "latency_p50_s": grouped["latency_s"].median(),
            "tokens_p50": grouped["completion_tokens"].median(),
            "ms_per_token_p50": (1000 * per_token).groupby(results["schema"]).median(),
        }
    )
    table.index = table.index.map({False: "without schema", True: "with schema"})
    table.index.name = "response_format"
    return table
