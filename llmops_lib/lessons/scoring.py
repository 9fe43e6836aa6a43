"""Score classifications against the truth: calibrate a threshold, accuracy, confusion.

Works on the table `classify.classify()` returns (columns truth, prediction, prediction_p,
p_positive, lang), and `score`/`plot_confusion` on any classifier's labels for rows of the
shipped assessments (the encoder's), so every lesson scores and draws alike.
"""

from __future__ import annotations

from collections.abc import Sized

import numpy as np
import pandas as pd

from ..core.errors import InputError, check_columns, fraction
from .classify import LABELS, NEGATIVE, NEUTRAL, POSITIVE


def calibrate_threshold(p: pd.Series, truth: pd.Series) -> float:
    """The threshold on p_positive with the best accuracy on labelled examples.

    Candidates are 0.5 and the midpoints between neighbouring scores; ties go to the one
    closest to 0.5, so few examples cannot pull the threshold to an extreme for nothing.
    """
    p, truth = pd.Series(p, dtype=object), pd.Series(truth, dtype=object)
    labelled = all(label in (POSITIVE, NEGATIVE) for label in truth)
    if len(p) == 0 or len(p) != len(truth) or not labelled:
        raise InputError(
            f"calibrate_threshold needs one label ({POSITIVE}/{NEGATIVE}) per score; got "
            f"{len(p)} scores and {len(truth)} labels {list(truth)[:4]}."
        )
    values = np.array([fraction(f"p[{i}]", value) for i, value in enumerate(p)])
    is_pos = truth.to_numpy() == POSITIVE
    scores = sorted(set(values))
    candidates = {0.5, *((a + b) / 2 for a, b in zip(scores, scores[1:], strict=False))}
    candidates |= {scores[0] - 1e-9, scores[-1] + 1e-9}

    def accuracy(t: float) -> float:
        return float(((values >= t) == is_pos).mean())

    return max(sorted(candidates), key=lambda t: (accuracy(t), -abs(t - 0.5)))


def accuracy(df: pd.DataFrame, column: str = "prediction") -> float:
    """Share of rows whose `column` equals the truth (neutral always counts as wrong)."""
    return float((df[column] == df["truth"]).mean())


def wilson(right: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of an accuracy measured as `right` out of `n` labels.

    Unlike the textbook p ± z·sqrt(p(1-p)/n) it stays inside [0, 1] and does not shrink to
    nothing when all n labels agree, which matters for the few labels a week gives.
    """
    from scipy.stats import binomtest

    if n < 1 or not 0 <= right <= n:
        raise InputError(f"wilson({right}, {n}): need n >= 1 labels and 0 <= right <= n.")
    ci = binomtest(right, n).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def accuracy_interval(
    df: pd.DataFrame, column: str = "prediction", confidence: float = 0.95
) -> tuple[float, float]:
    """Wilson interval of the accuracy of `column`: where the true accuracy likely lies.

    With a handful of texts one more or one fewer right answer moves the accuracy by many
    points; the interval says how far apart two accuracies must be before they differ.
    """
    if len(df) == 0:
        raise InputError("accuracy_interval needs at least one scored row.")
    if not 0 < confidence < 1:
        raise InputError(f"confidence={confidence}; use a level between 0 and 1, e.g. 0.95.")
    return wilson(int((df[column] == df["truth"]).sum()), len(df), confidence)


def confusion(df: pd.DataFrame, column: str = "prediction") -> pd.DataFrame:
    """Truth x prediction counts, with neutral as a column when it occurs."""
    predicted = [label for label in LABELS if label != NEUTRAL or (df[column] == NEUTRAL).any()]
    table = pd.crosstab(df["truth"], df[column]).reindex(
        index=[POSITIVE, NEGATIVE], columns=predicted, fill_value=0
    )
    table.index.name, table.columns.name = "truth", "predicted"
    return table


def _decide(p: pd.Series, threshold: float | pd.Series) -> pd.Series:
    return p.ge(threshold).map({True: POSITIVE, False: NEGATIVE})


def thresholds_by_language(calibration: pd.DataFrame) -> dict[str, float]:
    """calibrate_threshold() on each language's calibration rows alone.

    A small model's P(Yes) can sit in a different range per language (the tiny one leans to
    "Ja" in German), so one threshold may fit one language and decide the other by its
    language alone; each threshold then rests on that language's rows only.
    """
    check_columns("calibration", calibration, ("lang", "truth", "p_positive"))
    return {
        str(lang): calibrate_threshold(rows["p_positive"], rows["truth"])
        for lang, rows in calibration.groupby("lang")
    }


def accuracy_table(
    df: pd.DataFrame, threshold: float, per_language: dict[str, float] | None = None
) -> pd.DataFrame:
    """Accuracy per language and overall of the forced answer's first word, and of P(Yes) at
    0.5 and at `threshold` (and at each language's own threshold, if `per_language` gives
    them); `texts` counts the rows and `neutral answers` is a share."""
    check_columns("df", df, ("lang", "truth", "prediction", "p_positive"))
    fraction("threshold", threshold)
    own = None
    if per_language is not None:
        missing = sorted(set(df["lang"]) - set(per_language))
        if missing:
            raise InputError(
                f"per_language has no threshold for {missing}: give one per language of df "
                "(thresholds_by_language() on calibration rows of every language)"
            )
        own = df["lang"].map(
            {lang: fraction(f"per_language[{lang!r}]", t) for lang, t in per_language.items()}
        )
    groups = dict(list(df.groupby("lang"))) | {"all": df}
    rows = {}
    for name, g in groups.items():
        cutoffs = {"P(Yes) >= 0.5": 0.5, f"P(Yes) >= {threshold:.3f}": threshold}
        if own is not None:
            cutoffs["P(Yes) >= its language's"] = own.loc[g.index]
        rows[name] = {
            "texts": len(g),
            "forced answer": accuracy(g, "prediction"),
            "neutral answers": float((g["prediction"] == NEUTRAL).mean()),
        } | {
            label: float((_decide(g["p_positive"], t) == g["truth"]).mean())
            for label, t in cutoffs.items()
        }
    return pd.DataFrame(rows).T.astype({"texts": int})


def plot_confusions(df: pd.DataFrame, panels: dict[str, str]):
    """One truth x prediction matrix per {column: title} of a classify() table."""
    return _plot_matrices([(confusion(df, column), title) for column, title in panels.items()])


def plot_confusion(test: pd.DataFrame, predicted: list[str], title: str = ""):
    """One confusion matrix per language of `predicted` labels for `test` rows (columns
    label, lang: the shipped assessments), side by side; returns the matplotlib Figure."""
    check_columns("test", test, ("label", "lang"))
    frame = test.assign(truth=test["label"], predicted=list(predicted))
    return _plot_matrices(
        [
            (confusion(part, "predicted"), f"{title} {lang}".strip())
            for lang, part in frame.groupby("lang", sort=False)
        ]
    )


def _plot_matrices(matrices: list[tuple[pd.DataFrame, str]]):
    """Truth x prediction matrices side by side, counts written in the cells.

    Drawn by hand rather than with sklearn's ConfusionMatrixDisplay: a neutral answer adds
    a prediction column that has no truth row, so the matrix need not be square.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(matrices), figsize=(4.5 * len(matrices), 3.6), squeeze=False)
    for ax, (matrix, title) in zip(axes[0], matrices, strict=True):
        counts = matrix.to_numpy()
        top = max(int(counts.max()), 1)  # a fixed scale from 0: equal counts are not all white
        ax.imshow(counts, cmap="Blues", vmin=0, vmax=top)
        ax.set_xticks(range(matrix.shape[1]), matrix.columns)
        ax.set_yticks(range(matrix.shape[0]), matrix.index)
        ax.set(xlabel="predicted", ylabel="truth", title=title)
        for (i, j), n in np.ndenumerate(counts):
            colour = "white" if n > top / 2 else "black"
            ax.text(j, i, n, ha="center", va="center", color=colour)
    fig.tight_layout()
    return fig


def score(test: pd.DataFrame, predicted: list[str]) -> pd.DataFrame:
    """Accuracy and F1 per language (and overall) of `predicted` labels for `test` rows.

    F1 is for the class "positive" (aid recommended), the decision an assessor acts on.
    Any classifier's predictions fit in, so the encoder and the LLM lessons compare alike.
    """
    from sklearn.metrics import accuracy_score, f1_score

    check_columns("test", test, ("label", "lang"))
    if not isinstance(predicted, Sized) or isinstance(predicted, str):
        raise InputError(f"predicted is a {type(predicted).__name__}; pass one label per row.")
    if len(predicted) != len(test):
        raise InputError(f"Got {len(predicted)} predictions for {len(test)} test rows.")
    frame = test.assign(predicted=list(predicted))
    rows = []
    for name, part in [*frame.groupby("lang", sort=False), ("all", frame)]:
        rows.append(
            {
                "lang": name,
                "n": len(part),
                "accuracy": accuracy_score(part["label"], part["predicted"]),
                "f1": f1_score(part["label"], part["predicted"], pos_label="positive"),
            }
        )
    return pd.DataFrame(rows).set_index("lang").round(3)
