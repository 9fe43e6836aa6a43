"""Classify medical assessments with a decoder LLM: ask Yes/No, then decide two ways.

(a) generate an answer and parse its first word (Yes/Ja -> positive, No/Nein -> negative,
    anything else -> neutral), as the workshop does; the rest of the answer is the
    justification;
(b) read the probabilities of the answer's first token: P(Yes) / (P(Yes) + P(No)) is a
    probability of "positive" for every text (never neutral), and its threshold can be
    calibrated on the few labelled examples.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from tqdm import tqdm

from . import results
from .catalog import ModelSpec
from .hardware import Hardware

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
    },
}

# First words of an answer, both languages (a German prompt may still get "Yes").
ANSWER_WORDS = {POSITIVE: ("yes", "ja"), NEGATIVE: ("no", "nein")}
# Spellings whose first token counts for the probability method.
SPELLINGS = {
    side: [form for w in words for form in (w, w.capitalize(), w.upper(), " " + w.capitalize())]
    for side, words in ANSWER_WORDS.items()
}


class ChatModel(Protocol):
    def chat(self, messages: list[dict[str, str]], max_tokens: int = ...) -> Any: ...

    def next_token_probs(
        self, messages: list[dict[str, str]], words: dict[str, list[str]]
    ) -> dict[str, float]: ...


def _prompt(lang: str) -> dict[str, str]:
    if lang not in PROMPTS:
        raise ValueError(f"No prompt for language {lang!r}; use one of {', '.join(PROMPTS)}.")
    return PROMPTS[lang]


def messages(text: str, lang: str, examples: pd.DataFrame | None = None) -> list[dict[str, str]]:
    """System prompt, optional solved examples as earlier turns, then the question.

    The examples' answers are just "Yes."/"No." so they teach the answer format and the
    label meaning without adding many prompt tokens.
    """
    prompt = _prompt(lang)
    turns = [{"role": "system", "content": prompt["system"]}]
    for row in (examples if examples is not None else pd.DataFrame()).itertuples():
        answer = prompt["yes"] if row.label == POSITIVE else prompt["no"]
        turns.append({"role": "user", "content": prompt["user"].format(text=row.text)})
        turns.append({"role": "assistant", "content": f"{answer}."})
    turns.append({"role": "user", "content": prompt["user"].format(text=text)})
    return turns


def parse_answer(answer: str) -> str:
    """positive / negative / neutral from the first word of a generated answer.

    Leading whitespace, markdown and punctuation are skipped and case is ignored, so
    " **Yes.**", "JA," and "nein - ..." all parse; an answer that starts any other way is
    neutral (the model did not follow the format).
    """
    match = re.match(r"[\W_]*([^\W\d_]+)", answer)
    word = match.group(1).casefold() if match else ""
    for label, words in ANSWER_WORDS.items():
        if word in words:
            return label
    return NEUTRAL


def p_positive(model: ChatModel, msgs: list[dict[str, str]]) -> float:
    """P(answer starts with Yes/Ja) / P(Yes/Ja or No/Nein): a probability in [0, 1]."""
    probs = model.next_token_probs(msgs, SPELLINGS)
    total = probs[POSITIVE] + probs[NEGATIVE]
    if total == 0:
        raise ValueError("The model gives Yes and No zero probability; check the prompt.")
    return probs[POSITIVE] / total


def calibrate_threshold(p: pd.Series, truth: pd.Series) -> float:
    """The threshold on p_positive with the best accuracy on labelled examples.

    Candidates are 0.5 and the midpoints between neighbouring scores; ties go to the one
    closest to 0.5, so few examples cannot pull the threshold to an extreme for nothing.
    """
    if len(p) == 0 or set(truth) - {POSITIVE, NEGATIVE}:
        raise ValueError("calibrate_threshold needs labelled examples (positive/negative).")
    scores = sorted(set(p))
    candidates = {0.5, *((a + b) / 2 for a, b in zip(scores, scores[1:], strict=False))}
    candidates |= {scores[0] - 1e-9, scores[-1] + 1e-9}
    is_pos = truth.to_numpy() == POSITIVE
    values = p.to_numpy()

    def accuracy(t: float) -> float:
        return float(((values >= t) == is_pos).mean())

    return max(sorted(candidates), key=lambda t: (accuracy(t), -abs(t - 0.5)))


def classify(
    model: ChatModel,
    data: pd.DataFrame,
    generate: bool = True,
    max_tokens: int = 48,
    threshold: float = 0.5,
    examples: dict[str, pd.DataFrame] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Classify each row of `data` (columns text, label, lang) both ways.

    Returns text, lang, truth, p_positive, prediction_p (p_positive >= threshold),
    prediction (parsed from the generated answer; empty when generate=False),
    explanation (the generated answer) and latency_s (time spent on the text).
    `examples` maps a language to solved examples put into the prompt.
    """
    rows = []
    for row in tqdm(list(data.itertuples()), desc="classify", disable=not progress):
        msgs = messages(row.text, row.lang, (examples or {}).get(row.lang))
        start = time.perf_counter()
        p = p_positive(model, msgs)
        answer = ""
        if generate:
            reply = model.chat(msgs, max_tokens=max_tokens, temperature=0.0)
            answer = reply["choices"][0]["message"]["content"].strip()
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


def accuracy(df: pd.DataFrame, column: str = "prediction") -> float:
    """Share of rows whose `column` equals the truth (neutral always counts as wrong)."""
    return float((df[column] == df["truth"]).mean())


def confusion(df: pd.DataFrame, column: str = "prediction") -> pd.DataFrame:
    """Truth x prediction counts, with neutral as a column when it occurs."""
    predicted = [label for label in LABELS if label != NEUTRAL or (df[column] == NEUTRAL).any()]
    table = pd.crosstab(df["truth"], df[column]).reindex(
        index=[POSITIVE, NEGATIVE], columns=predicted, fill_value=0
    )
    table.index.name, table.columns.name = "truth", "predicted"
    return table


def save(df: pd.DataFrame, stem: str = "assessments", directory: str | Path | None = None):
    """Write `df` as .xlsx and .csv with one new timestamp; never over an earlier run."""
    xlsx = results.new_path(stem, ".xlsx", directory)
    csv = xlsx.with_suffix(".csv")
    results.write_atomic(xlsx, lambda tmp: df.to_excel(tmp, index=False))
    results.write_atomic(csv, lambda tmp: df.to_csv(tmp, index=False))
    return xlsx, csv


def _decide(p: pd.Series, threshold: float) -> pd.Series:
    return p.ge(threshold).map({True: POSITIVE, False: NEGATIVE})


def accuracy_table(df: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Accuracy per language and overall: parsed answers, and P(Yes) at 0.5 and `threshold`."""
    groups = dict(list(df.groupby("lang"))) | {"all": df}
    thresholds = {"P(Yes) >= 0.5": 0.5, f"P(Yes) >= {threshold:.3f}": threshold}
    rows = {}
    for name, g in groups.items():
        rows[name] = {
            "texts": len(g),
            "answer parsed": accuracy(g, "prediction"),
            "neutral answers": float((g["prediction"] == NEUTRAL).mean()),
        } | {
            label: float((_decide(g["p_positive"], t) == g["truth"]).mean())
            for label, t in thresholds.items()
        }
    return pd.DataFrame(rows).T


def plot_confusions(df: pd.DataFrame, panels: dict[str, str]):
    """One truth x prediction matrix per {column: title}, counts written in the cells.

    Drawn by hand rather than with sklearn's ConfusionMatrixDisplay: a neutral answer adds
    a prediction column that has no truth row, so the matrix need not be square.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (column, title) in zip(axes[0], panels.items(), strict=True):
        matrix = confusion(df, column)
        counts = matrix.to_numpy()
        ax.imshow(counts, cmap="Blues")
        ax.set_xticks(range(matrix.shape[1]), matrix.columns)
        ax.set_yticks(range(matrix.shape[0]), matrix.index)
        ax.set(xlabel="predicted", ylabel="truth", title=title)
        for (i, j), n in np.ndenumerate(counts):
            colour = "white" if n > counts.max() / 2 else "black"
            ax.text(j, i, n, ha="center", va="center", color=colour)
    fig.tight_layout()
    return fig


def compare_precisions(
    spec: ModelSpec,
    precisions: tuple[str, ...],
    hw: Hardware,
    calibration: pd.DataFrame,
    evaluation: pd.DataFrame,
    examples: dict[str, pd.DataFrame] | None = None,
    n_tokens: int = 32,
) -> pd.DataFrame:
    """Load `spec` in each precision: load time, footprint (measured and planned), decode
    tokens/s and the Yes/No-probability accuracy with a threshold calibrated per precision.

    A precision this machine cannot run gets a row with the reason instead of a crash.
    """
    from . import hf

    rows = []
    for precision in precisions:
        row: dict[str, Any] = {"precision": precision}
        try:
            with hf.load(spec, precision, hw) as model:
                calib = classify(model, calibration, generate=False, examples=examples)
                threshold = calibrate_threshold(calib["p_positive"], calib["truth"])
                scored = classify(
                    model, evaluation, generate=False, threshold=threshold, examples=examples
                )
                first = evaluation.iloc[0]
                msgs = messages(first.text, first.lang, (examples or {}).get(first.lang))
                model.chat(msgs, max_tokens=n_tokens, min_new_tokens=n_tokens)
                row |= {
                    "load s": model.load_s,
                    "footprint MB": model.footprint_bytes / 1e6,
                    "planned MB": model.plan.weights_gb * 1000,
                    "tokens/s": model.timings().generated_tps,
                    "threshold": threshold,
                    "accuracy": accuracy(scored, "prediction_p"),
                    "note": "",
                }
        except hf.PrecisionError as err:
            row["note"] = str(err)
        rows.append(row)
    return pd.DataFrame(rows).set_index("precision")
