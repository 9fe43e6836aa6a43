"""The data shipped in llmops_lib/data/: the synthetic EN/DE medical assessments, and two
public-domain texts for measuring language models.

One tidy table (text, label, lang, set) so every lesson - the SetFit encoder, the
LLM classifier, the evaluation - reads the same examples the same way. See
llmops_lib/data/README.md: every assessment is made up for this course.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd

from .errors import InputError, check_columns, unknown, whole

LABELS = ("negative", "positive")  # positive: the requested aid is recommended
LANGS = ("en", "de")
SETS = ("fewshot", "eval")
# Plain-text files for llama.cpp's tools (see data/README.md): notebook 09 scores models on
# the first and calibrates its importance matrix on the second, so the two never overlap.
TEXTS = ("us_founding_documents.txt", "lincoln_speeches.txt")


def load_assessments(lang: str | None = None) -> pd.DataFrame:
    """All assessments (or those of one language) as a DataFrame.

    Columns: text, label ("positive"/"negative"), lang ("en"/"de"), set ("fewshot" for
    the 5+5 training examples per language, "eval" for the held-out set). The index is
    the row number in the CSV, stable across calls, so splits can be compared by index.
    """
    if lang is not None and lang not in LANGS:
        raise unknown(lang, "language", LANGS, "Or None for all.")
    df = _read("assessments.csv")
    return df if lang is None else df[df["lang"] == lang]


def load_new_traffic() -> pd.DataFrame:
    """Assessments that differ from the training data, for notebook 11's drift detection.

    Same columns as `load_assessments` (set "new"): mostly German, about three times as
    long, structured as a letter (Re / Findings / Assessment / Recommendation), about aids
    the original set hardly mentions (stair lifts, insulin pumps, CPAP devices, ...).
    """
    return _read("assessments_new_traffic.csv")


def _read(name: str) -> pd.DataFrame:
    source = resources.files("llmops_lib") / "data" / name
    with resources.as_file(source) as path:
        return pd.read_csv(path, dtype=str, keep_default_na=False)


def split(df: pd.DataFrame, k_per_class: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Few-shot train set and fixed test set: (train, test).

    train: `k_per_class` examples drawn with `seed` from the few-shot rows of every
    (language, label) pair in `df`; test: all evaluation rows of `df`. The test set
    does not depend on k or seed, so results for different k are comparable, and it
    never shares a row with train.
    """
    check_columns("df", df, ("text", "label", "lang", "set"))
    whole("k_per_class", k_per_class)
    whole("seed", seed, minimum=0)
    fewshot = df[df["set"] == "fewshot"]
    if fewshot.empty or not (df["set"] == "eval").any():
        raise InputError(
            "split() needs both 'fewshot' and 'eval' rows; pass load_assessments() "
            "(optionally filtered by language), not an already split frame."
        )
    available = int(fewshot.groupby(["lang", "label"]).size().min())
    if not 1 <= k_per_class <= available:
        raise InputError(
            f"k_per_class={k_per_class} is out of range: each language and label has "
            f"{available} few-shot examples; choose 1..{available}."
        )
    train = fewshot.groupby(["lang", "label"], group_keys=False).sample(
        n=k_per_class, random_state=seed
    )
    test = df[df["set"] == "eval"]
    return train, test


def text_path(name: str) -> Path:
    """The file of a shipped text (one of TEXTS), for tools that read a path."""
    if name not in TEXTS:
        raise unknown(name, "shipped text", TEXTS)
    return Path(str(resources.files("llmops_lib") / "data" / name))
