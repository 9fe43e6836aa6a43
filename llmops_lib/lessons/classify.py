"""Classify medical assessments with a decoder LLM: ask Yes/No, then decide two ways.

(a) generate an answer forced to begin "Yes, because" or "No, because" (German: Ja/Nein,
    denn; `answer_starts`), and parse its first word (Yes/Ja -> positive, No/Nein ->
    negative, anything else -> neutral), as the workshop does; the rest of the answer is
    the justification;
(b) read the probabilities of the answer's first token: P(Yes) / (P(Yes) + P(No)) is a
    probability of "positive" for every text (never neutral), and its threshold can be
    calibrated on the few labelled examples (`scoring.calibrate_threshold`).
"""

from __future__ import annotations

import re
import time

import pandas as pd

from ..core import results
from ..core.backend import ScoringModel, reply_text
from ..core.errors import InputError, check_columns, fraction, lookup, whole
from ..core.progress import bar

# Notebook 02's scored assessments (a spreadsheet to open, and the CSV the wrap-up reads).
ASSESSMENTS = results.Kind(
    "02_assessments", ".csv", "02", "LLM classifier accuracy and latency", formats=(".xlsx",)
)

POSITIVE, NEGATIVE, NEUTRAL = "positive", "negative", "neutral"
LABELS = (POSITIVE, NEGATIVE, NEUTRAL)

PROMPTS: dict[str, dict[str, str]] = {
    "en": {
        "system": (
            "You are an expert in statutory health insurance. You read socio-medical "
            "assessments of requested medical aids and say whether they recommend the aid."
        ),
        "user": (
            "Does the following assessment give a positive recommendation for the requested "
            "aid? Answer with Yes or No first, then justify briefly in one sentence.\n\n"
            "Assessment: {text}"
        ),
        "yes": "Yes",
        "no": "No",
        "because": "because",
    },
    "de": {
        "system": (
            "Du bist Expertin für die gesetzliche Krankenversicherung. Du liest "
            "sozialmedizinische Gutachten zu beantragten Hilfsmitteln und sagst, ob sie das "
            "Hilfsmittel empfehlen."
        ),
        "user": (
            "Enthält das folgende Gutachten eine positive Empfehlung für das beantragte "
            "Hilfsmittel? Antworte zuerst mit Ja oder Nein und begründe dann kurz in einem "
            "Satz.\n\nGutachten: {text}"
        ),
        "yes": "Ja",
        "no": "Nein",
        "because": "denn",
    },
}

# First words of an answer, both languages (a German prompt may still get "Yes").
ANSWER_WORDS = {POSITIVE: ("yes", "ja"), NEGATIVE: ("no", "nein")}
# Spellings whose first token counts for the probability method.
SPELLINGS = {
    side: [form for w in words for form in (w, w.capitalize(), w.upper(), " " + w.capitalize())]
    for side, words in ANSWER_WORDS.items()
}


def _prompt(lang: str) -> dict[str, str]:
    return lookup(PROMPTS, lang, "prompt language")


def messages(text: str, lang: str, examples: pd.DataFrame | None = None) -> list[dict[str, str]]:
    """System prompt, optional solved examples as earlier turns, then the question.

    The examples' answers are just "Yes."/"No." so they teach the answer format and the
    label meaning without adding many prompt tokens.
    """
    prompt = _prompt(lang)
    if not isinstance(text, str):
        raise InputError(f"text is a {type(text).__name__}; pass the assessment as a string.")
    turns = [{"role": "system", "content": prompt["system"]}]
    for row in (examples if examples is not None else pd.DataFrame()).itertuples():
        answer = prompt["yes"] if row.label == POSITIVE else prompt["no"]
        turns.append({"role": "user", "content": prompt["user"].format(text=row.text)})
        turns.append({"role": "assistant", "content": f"{answer}."})
    turns.append({"role": "user", "content": prompt["user"].format(text=text)})
    return turns


def answer_starts(lang: str) -> list[str]:
    """The two ways an answer may begin ("Yes, because" / "No, because"; German Ja/Nein, denn).

    Forcing one of them makes the first token a label and the rest a reason: without it the
    tiny model copies the solved examples' bare "Yes."/"No." and gives no reason.
    """
    prompt = _prompt(lang)
    return [f"{prompt[side]}, {prompt['because']}" for side in ("yes", "no")]


def parse_answer(answer: str) -> str:
    """positive / negative / neutral from the first word of a generated answer.

    Leading whitespace, markdown and punctuation are skipped and case is ignored, so
    " **Yes.**", "JA," and "nein - ..." all parse; an answer that starts any other way is
    neutral (the model did not follow the format).
    """
    if not isinstance(answer, str):
        raise InputError(f"answer is a {type(answer).__name__}; pass the generated text.")
    match = re.match(r"[\W_]*([^\W\d_]+)", answer)
    word = match.group(1).casefold() if match else ""
    for label, words in ANSWER_WORDS.items():
        if word in words:
            return label
    return NEUTRAL


def p_positive(model: ScoringModel, msgs: list[dict[str, str]]) -> float:
    """P(answer starts with Yes/Ja) / P(Yes/Ja or No/Nein): a probability in [0, 1]."""
    probs = model.next_token_probs(msgs, SPELLINGS)
    total = probs[POSITIVE] + probs[NEGATIVE]
    if total == 0:
        raise ValueError("The model gives Yes and No zero probability; check the prompt.")
    return probs[POSITIVE] / total


def classify(
    model: ScoringModel,
    data: pd.DataFrame,
    generate: bool = True,
    max_tokens: int = 48,
    threshold: float = 0.5,
    examples: dict[str, pd.DataFrame] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Classify each row of `data` (columns text, label, lang) both ways.

    Returns text, lang, truth, p_positive, prediction_p (p_positive >= threshold),
    prediction (parsed from the generated answer, which begins with a label and
    "because": `answer_starts`; empty when generate=False), explanation (the answer)
    and latency_s (time spent on the text).
    `examples` maps a language to solved examples put into the prompt.
    """
    check_columns("data", data, ("text", "label", "lang"))
    whole("max_tokens", max_tokens)
    fraction("threshold", threshold)
    rows = []
    for row in bar(list(data.itertuples()), desc="classify", disable=not progress):
        msgs = messages(row.text, row.lang, (examples or {}).get(row.lang))
        start = time.perf_counter()
        p = p_positive(model, msgs)
        answer = ""
        if generate:
            reply = model.chat_starting(msgs, answer_starts(row.lang), max_tokens=max_tokens)
            answer = reply_text(reply).strip()
        rows.append(
            {
                "text": row.text,
                "lang": row.lang,
                "truth": row.label,
                "p_positive": p,
                "prediction_p": POSITIVE if p >= threshold else NEGATIVE,
                "prediction": parse_answer(answer) if generate else "",
                "explanation": answer,
                "latency_s": time.perf_counter() - start,
            }
        )
    return pd.DataFrame(rows)
