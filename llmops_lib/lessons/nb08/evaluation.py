"""Evaluate a classifier in production: a traffic light per prediction, an offline
dashboard over a logged batch, and what ground truth costs.

Online, a user needs one thing per prediction: can I trust it? `confidence` turns a
classifier's P(positive) into a distance from its decision threshold, and a `TrafficLight`
(two thresholds chosen on a labelled calibration split) maps it to green (trust), yellow
(check) or red (do not show). Offline, developers look at a whole batch of logged
predictions (`log_predictions`, `log_from_classify`): accuracy per language and class,
answer length, latency percentiles (`summary`, `plot_dashboard`). Both need labels, which
cost reviewer time: `labelling_plan` and `simulate_sampling` show what forcing a red light on
a random sample of the traffic buys.

Works for any classifier that gives P(positive): the SetFit head of notebook 01 and the LLM's
P(Yes) of notebook 02 go through the same functions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ...core import results
from ...core.errors import InputError
from ..classify import NEGATIVE, POSITIVE
from ..scoring import wilson

PREDICTION_LOG = results.Kind("08_prediction_log", ".csv", "08", "accuracy on 08's held-out texts")
TAKEAWAYS = results.Kind("08_takeaways", ".csv", "08", "the figures behind 08's takeaways")

COLOURS = ("green", "yellow", "red")
# What a user of the assessment service is shown for each colour (the verdict, or not).
VERDICTS = {POSITIVE: "aid recommended", NEGATIVE: "aid not recommended"}
LOG_COLUMNS = ["model", "text", "lang", "truth", "predicted", "p_positive", "latency_ms", "answer"]


def _probabilities(p: Sequence[float], what: str = "p_positive") -> np.ndarray:
    values = np.asarray(p, dtype=float)
    if values.size == 0:
        raise InputError(f"{what} is empty; pass at least one prediction.")
    if np.isnan(values).any():
        raise InputError(
            f"{what} has {int(np.isnan(values).sum())} NaN value(s); drop or recompute those "
            "predictions first."
        )
    if ((values < 0) | (values > 1)).any():
        raise InputError(
            f"{what} must lie in [0, 1]; got values from {values.min()} to {values.max()}."
        )
    return values


def _correct(correct: Sequence[bool], n: int) -> np.ndarray:
    values = np.asarray(correct)
    if values.dtype != bool:
        raise InputError(f"correct must be True/False per prediction, got dtype {values.dtype}.")
    if values.size != n:
        raise InputError(f"Got {values.size} correct flags for {n} predictions; pass one each.")
    return values


def confidence(p_positive: Sequence[float], threshold: float = 0.5) -> np.ndarray:
    """How sure each decision is: 0 at the decision threshold, 1 at P = 0 or P = 1.

    The distance from the threshold, scaled by the room on that side, so a classifier with a
    calibrated threshold (the LLM's P(Yes) >= 0.8, say) is measured like one at 0.5.
    """
    p = _probabilities(p_positive)
    if not 0 < threshold < 1:
        raise InputError(f"threshold={threshold}: use a value strictly between 0 and 1.")
    return np.where(p >= threshold, (p - threshold) / (1 - threshold), (threshold - p) / threshold)


@dataclass(frozen=True)
class TrafficLight:
    """green from `green_from` on, red below `red_below`, yellow between."""

    red_below: float
    green_from: float

    def colours(self, conf: Sequence[float]) -> np.ndarray:
        values = _probabilities(conf, "confidence")
        return np.select(
            [values >= self.green_from, values < self.red_below], ["green", "red"], "yellow"
        )


def choose_thresholds(
    conf: Sequence[float],
    correct: Sequence[bool],
    green_accuracy: float = 0.9,
    red_accuracy: float = 0.6,
    min_rows: int = 3,
) -> TrafficLight:
    """The two thresholds of a traffic light, from a labelled calibration split.

    An isotonic regression of right/wrong on confidence estimates P(right | confidence), the
    best fit that never falls as confidence rises. Green starts at the lowest confidence where
    that estimate reaches `green_accuracy`; red covers the confidences where it stays at or
    below `red_accuracy` (hardly better than a coin); yellow is what lies between. When no
    confidence reaches the green target, green stays empty (green_from = inf); when none beats
    the red one, all is red. A split with no wrong prediction has no red: it cannot show where
    errors begin.
    """
    from sklearn.isotonic import IsotonicRegression

    values = _probabilities(conf, "confidence")
    ok = _correct(correct, values.size)
    if values.size < min_rows:
        raise InputError(
            f"The calibration split has {values.size} predictions; choosing thresholds needs at "
            f"least min_rows={min_rows}. Label more rows."
        )
    if not 0 <= red_accuracy < green_accuracy <= 1:
        raise InputError(
            f"Need 0 <= red_accuracy < green_accuracy <= 1; got {red_accuracy}, {green_accuracy}."
        )
    levels = np.unique(values)
    fit = IsotonicRegression(increasing=True, y_min=0, y_max=1).fit(values, ok.astype(float))
    p_right = fit.predict(levels)
    green = levels[p_right >= green_accuracy]
    above_red = levels[p_right > red_accuracy]
    return TrafficLight(
        red_below=float(above_red.min()) if above_red.size else math.inf,
        green_from=float(green.min()) if green.size else math.inf,
    )


def light_report(colours: Sequence[str], correct: Sequence[bool]) -> pd.DataFrame:
    """Per colour: rows, share of all rows and accuracy (NaN for an empty colour)."""
    colours = np.asarray(colours)
    ok = _correct(correct, colours.size)
    if colours.size == 0:
        raise InputError("light_report got no predictions; pass at least one.")
    rows = {}
    for colour in COLOURS:
        mine = ok[colours == colour]
        rows[colour] = {
            "rows": int(mine.size),
            "share": mine.size / colours.size,
            "accuracy": float(mine.mean()) if mine.size else math.nan,
        }
    return pd.DataFrame(rows).T.astype({"rows": int})


def coverage_curve(conf: Sequence[float], correct: Sequence[bool]) -> pd.DataFrame:
    """Accuracy of the predictions shown when only those above a confidence are shown.

    One row per distinct confidence (highest first): coverage (share shown), accuracy of the
    shown ones, and the confidence threshold that shows them.
    """
    values = _probabilities(conf, "confidence")
    ok = _correct(correct, values.size)
    order = np.argsort(-values, kind="stable")
    values, ok = values[order], ok[order]
    shown = np.arange(1, values.size + 1)
    last_of_level = np.r_[values[1:] != values[:-1], True]  # ties are shown together
    return pd.DataFrame(
        {
            "coverage": shown[last_of_level] / values.size,
            "accuracy": np.cumsum(ok)[last_of_level] / shown[last_of_level],
            "threshold": values[last_of_level],
        }
    )


def plot_coverage(curves: dict[str, pd.DataFrame], marks: dict[str, float] | None = None):
    """Accuracy against coverage for each {name: coverage_curve}; `marks` {name: coverage}
    draws where the green light of that model ends."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        line = ax.step(curve["coverage"], curve["accuracy"], where="post", label=name)[0]
        if marks and name in marks:
            ax.axvline(marks[name], color=line.get_color(), linestyle=":", linewidth=1)
    ax.axhline(0.5, color="grey", linewidth=0.8, label="guessing")
    ax.set(
        xlabel="coverage (share of predictions shown)",
        ylabel="accuracy of those shown",
        ylim=(0, 1.05),
        xlim=(0, 1.02),
        title="Coverage vs accuracy (held-out rows)",
    )
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def user_view(
    texts: Sequence[str], predicted: Sequence[str], colours: Sequence[str]
) -> pd.DataFrame:
    """What a caseworker would see for each text: the verdict, a prompt to check it, or none."""
    shown = []
    for label, colour in zip(predicted, colours, strict=True):
        verdict = VERDICTS[label]
        shown.append(
            {
                "green": f"GREEN  {verdict}",
                "yellow": f"YELLOW {verdict}? please check the assessment",
                "red": "RED    no automatic verdict: please read and decide",
            }[colour]
        )
    return pd.DataFrame({"text": list(texts), "shown to the user": shown})


# --- offline evaluation: a logged batch ---------------------------------------------------


def _rows(rows: pd.DataFrame) -> pd.DataFrame:
    missing = {"text", "label", "lang"} - set(rows.columns)
    if missing:
        raise InputError(f"rows lack column(s) {sorted(missing)}; pass load_assessments() rows.")
    if rows.empty:
        raise InputError("rows is empty; pass at least one text to classify.")
    return rows


def log_predictions(clf, rows: pd.DataFrame, name: str, threshold: float = 0.5) -> pd.DataFrame:
    """Classify each row on its own (a batch of one, as a service sees requests) and log it.

    `clf` is anything with `predict_proba(texts)` returning a column "positive" (the SetFit
    classifier of notebook 01). One unmeasured call first pays for lazy initialisation.
    """
    rows = _rows(rows)
    clf.predict_proba(rows["text"].iloc[:1])
    records = []
    for row in rows.itertuples():
        start = time.perf_counter()
        p = float(clf.predict_proba([row.text])[POSITIVE].iloc[0])
        ms = (time.perf_counter() - start) * 1000
        predicted = POSITIVE if p >= threshold else NEGATIVE
        records.append([name, row.text, row.lang, row.label, predicted, p, ms, ""])
    return pd.DataFrame(records, columns=LOG_COLUMNS, index=rows.index)


def log_from_classify(scored: pd.DataFrame, name: str, threshold: float) -> pd.DataFrame:
    """The table `classify.classify()` returns, as a log: P(Yes) >= `threshold` decides (the
    calibrated threshold), the generated answer (if any) is kept."""
    if scored.empty:
        raise InputError("scored is empty; classify at least one text first.")
    p = _probabilities(scored["p_positive"])
    return pd.DataFrame(
        {
            "model": name,
            "text": scored["text"],
            "lang": scored["lang"],
            "truth": scored["truth"],
            "predicted": np.where(p >= threshold, POSITIVE, NEGATIVE),
            "p_positive": p,
            "latency_ms": scored["latency_s"] * 1000,
            "answer": scored["explanation"],
        }
    )[LOG_COLUMNS]


def answer_lengths(answers: Sequence[str]) -> pd.DataFrame:
    """Characters, words and bullet points (lines starting with -, *, • or "1.") per answer."""
    answers = pd.Series(list(answers), dtype=str)
    bullets = answers.str.count(r"(?m)^\s*(?:[-*•]|\d+[.)])\s")
    return pd.DataFrame(
        {"chars": answers.str.len(), "words": answers.str.split().str.len(), "bullets": bullets}
    )


def _check_log(log: pd.DataFrame) -> pd.DataFrame:
    missing = set(LOG_COLUMNS) - set(log.columns)
    if missing:
        raise InputError(
            f"log lacks column(s) {sorted(missing)}; build it with log_predictions() or "
            "log_from_classify()."
        )
    if log.empty:
        raise InputError("The log is empty; there is nothing to evaluate.")
    _probabilities(log["p_positive"])
    return log


def percentiles(latency_ms: Sequence[float], qs: Sequence[int] = (50, 90)) -> dict[str, float]:
    """Latency percentiles, e.g. {"p50 ms": ..., "p90 ms": ...}: the median hides the tail."""
    values = np.asarray(latency_ms, dtype=float)
    if values.size == 0:
        raise InputError("No latencies to summarise; log at least one request.")
    return {f"p{q} ms": float(np.percentile(values, q)) for q in qs}


def latency_table(latencies: dict[str, Sequence[float]]) -> pd.DataFrame:
    """One row per step (a prediction, a judge): how many requests, p50 and p90 in ms."""
    return pd.DataFrame(
        {name: {"count": len(ms), **percentiles(ms)} for name, ms in latencies.items()}
    ).T


def summary(log: pd.DataFrame) -> pd.DataFrame:
    """One row per model: accuracy overall, per language and per true class; latency
    percentiles; mean answer length. The table behind `plot_dashboard`."""
    log = _check_log(log)
    rows = {}
    for model, part in log.groupby("model", sort=False):
        right = part["predicted"] == part["truth"]
        row = {"rows": len(part), "accuracy": right.mean()}
        row |= {f"accuracy {k}": v for k, v in right.groupby(part["lang"]).mean().items()}
        row |= {f"accuracy {k}": v for k, v in right.groupby(part["truth"]).mean().items()}
        row |= percentiles(part["latency_ms"], (50, 90, 99))
        row |= {f"answer {k}": v for k, v in answer_lengths(part["answer"]).mean().items()}
        rows[model] = row
    return pd.DataFrame(rows).T


def plot_dashboard(log: pd.DataFrame):
    """Four panels for developers: accuracy per language, per class, answer length in words,
    latency percentiles (log scale: an encoder and an LLM differ by orders of magnitude)."""
    import matplotlib.pyplot as plt

    table = summary(log)
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, prefix, title in (
        (axes[0], ("accuracy en", "accuracy de"), "accuracy per language"),
        (axes[1], (f"accuracy {POSITIVE}", f"accuracy {NEGATIVE}"), "accuracy per true class"),
    ):
        columns = [c for c in prefix if c in table.columns]
        table[columns].rename(columns=lambda c: c.split()[-1]).plot.bar(ax=ax, rot=0)
        ax.axhline(0.5, color="grey", linewidth=0.8)
        ax.set(title=title, ylim=(0, 1), xlabel="")
    words = {model: answer_lengths(part["answer"])["words"] for model, part in log.groupby("model")}
    axes[2].hist(list(words.values()), label=list(words), bins=10)
    axes[2].set(title="answer length", xlabel="words", ylabel="answers")
    axes[2].legend(fontsize="small")
    table[["p50 ms", "p90 ms", "p99 ms"]].plot.bar(ax=axes[3], rot=0, logy=True)
    axes[3].set(title="latency percentiles", ylabel="ms per prediction", xlabel="")
    fig.tight_layout()
    return fig


# --- ground truth: what labels cost ----------------------------------------------------


def labelling_plan(
    volume_per_week: int,
    rates: Sequence[float],
    accuracy: float,
    minutes_per_label: float,
    weeks: Sequence[int] = (1, 4),
) -> pd.DataFrame:
    """For each sampling rate: labels a week, reviewer hours a week, and the width of the 95 %
    interval of the accuracy estimate after each of `weeks` (at the given true accuracy)."""
    if volume_per_week < 1 or minutes_per_label <= 0 or not 0 <= accuracy <= 1:
        raise InputError(
            "labelling_plan needs volume_per_week >= 1, minutes_per_label > 0 and an accuracy "
            f"in [0, 1]; got {volume_per_week}, {minutes_per_label}, {accuracy}."
        )
    rows = []
    for rate in rates:
        if not 0 < rate <= 1:
            raise InputError(f"sampling rate {rate}: use a share in (0, 1].")
        labels = max(1, round(rate * volume_per_week))
        row = {"rate": rate, "labels/week": labels, "hours/week": labels * minutes_per_label / 60}
        for w in weeks:
            low, high = wilson(round(accuracy * labels * w), labels * w)
            row[f"±CI after {w} wk"] = (high - low) / 2
        rows.append(row)
    return pd.DataFrame(rows).set_index("rate")


def simulate_sampling(
    correct: Sequence[bool], volume_per_week: int, rate: float, weeks: int, seed: int = 0
) -> pd.DataFrame:
    """Force a red light on a random `rate` of each week's traffic and estimate accuracy.

    The traffic is drawn (with replacement) from `correct`, a held-out batch whose labels
    stand in for production; each week yields Binomial(volume, rate) labels, an estimate and
    its Wilson interval. Returns one row per week.
    """
    ok = _correct(correct, len(correct))
    if ok.size == 0:
        raise InputError("simulate_sampling needs a non-empty batch of right/wrong flags.")
    rng = np.random.default_rng(seed)
    rows = []
    for week in range(1, weeks + 1):
        n = max(1, int(rng.binomial(volume_per_week, rate)))
        right = int(rng.choice(ok, size=n, replace=True).sum())
        low, high = wilson(right, n)
        rows.append({"week": week, "labels": n, "estimate": right / n, "low": low, "high": high})
    return pd.DataFrame(rows).set_index("week")


def plot_ground_truth(plan: pd.DataFrame, simulated: pd.DataFrame, true_accuracy: float):
    """Left: interval width against sampling rate; right: weekly estimates of one rate."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for column in [c for c in plan.columns if c.startswith("±CI")]:
        left.plot(plan.index * 100, plan[column], marker="o", label=column.replace("±CI ", ""))
    left.set(
        xscale="log",
        xlabel="sampling rate (% of traffic forced red)",
        ylabel="± accuracy (95 % interval)",
        title="What a sampling rate buys",
    )
    left.legend()
    err = [simulated["estimate"] - simulated["low"], simulated["high"] - simulated["estimate"]]
    right.errorbar(simulated.index, simulated["estimate"], yerr=err, fmt="o", capsize=3)
    right.axhline(true_accuracy, color="grey", linestyle="--", label="accuracy of the batch")
    right.set(
        xlabel="week",
        ylabel="estimated accuracy",
        ylim=(0, 1.05),
        title="Weekly estimates, one sampling rate",
    )
    right.legend(fontsize="small")
    fig.tight_layout()
    return fig
