"""The course's measured figures side by side, read from the files the notebooks saved.

Every notebook that measures something saves it in results/ under a timestamped name
(`results.save_frame`, the guard's audit log). The wrap-up reads the newest file of each
kind, takes the few figures that answer the course's question ("would an encoder do the
job?") and puts them in one table; it measures nothing itself. A kind with no file yet
becomes a line naming the notebook to run, never an error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ...core import course, results
from ...core.errors import InputError
from .. import classify, loadtest, scoring
from ..nb01 import few_shot
from ..nb06 import audit
from ..nb07 import bench
from ..nb08 import evaluation
from ..nb09 import quant_sweep

# `n`, `low`, `high`: for an accuracy, the texts it was measured on and its 95 % Wilson
# interval (two accuracies whose intervals overlap are not told apart by these texts).
COLUMNS = ["topic", "measure", "value", "unit", "n", "low", "high", "notebook", "file"]
# What a reader returns per figure: (topic, measure, value, unit), and for an accuracy the
# number of texts it was measured on as a fifth element.
Figure = tuple


@dataclass(frozen=True)
class Source:
    """One kind of results file (declared by the lesson that writes it) and how to read it.

    `read(path)` returns Figures: (topic, measure, value, unit[, texts scored]).
    """

    kind: results.Kind
    read: Callable[[Path], list[tuple[str, str, float, str]]]


def _columns(df: pd.DataFrame, path: Path, needed: list[str]) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise InputError(
            f"{path.name} has no column(s) {missing}: it was written by another version of "
            "its notebook; re-run that notebook to write a current file."
        )


def _encoder(path: Path) -> list[Figure]:
    """01's k-sweep: accuracy of the encoder trained on the most examples per class."""
    df = pd.read_csv(path)
    _columns(df, path, ["k", "accuracy all", "test texts"])
    best = df.loc[df["k"].idxmax()]
    measure = f"encoder (SetFit, k={int(best['k'])} per class)"
    return [("accuracy", measure, best["accuracy all"], "", int(best["test texts"]))]


def _llm_classifier(path: Path) -> list[Figure]:
    """02's scored assessments: accuracy two ways, and the time per text."""
    df = pd.read_csv(path)
    _columns(df, path, ["truth", "prediction", "prediction_p", "latency_s"])
    n = len(df)
    return [
        ("accuracy", "LLM, parsed Yes/No answer", (df["prediction"] == df["truth"]).mean(), "", n),
        ("accuracy", "LLM, P(Yes) ≥ threshold", (df["prediction_p"] == df["truth"]).mean(), "", n),
        ("ms per text", "LLM classifier", 1000 * df["latency_s"].median(), "ms"),
    ]


def _held_out(path: Path) -> list[Figure]:
    """08's prediction log: each model's accuracy on the texts it scored, and its median time."""
    df = pd.read_csv(path)
    _columns(df, path, ["model", "truth", "predicted", "latency_ms"])
    logs = list(df.groupby("model", sort=False))
    accuracy: list[Figure] = [
        ("accuracy", f"08 held-out: {m}", (log["predicted"] == log["truth"]).mean(), "", len(log))
        for m, log in logs
    ]
    timing: list[Figure] = [
        ("ms per text", f"08 held-out: {m}", log["latency_ms"].median(), "ms") for m, log in logs
    ]
    return accuracy + timing


def _quantization(path: Path) -> list[Figure]:
    """09's table: each type's KL divergence from F16, the quality its file size costs."""
    df = pd.read_csv(path, index_col=0)
    _columns(df, path, ["file_mb", "kld"])
    return [
        ("KL divergence vs F16", f"{name} ({row.file_mb:.0f} MB)", row.kld, "")
        for name, row in df.iterrows()
        if row.kld > 0
    ]


def _guard(path: Path) -> list[Figure]:
    """06's audit log: the encoder prompt guard, an LLM guard check and the chat reply."""
    df = pd.read_json(path, lines=True)
    _columns(df, path, ["input_guard", "ms"])
    stages = ["input_check", "chat", "output_check"]
    ms = pd.DataFrame(list(df["ms"])).reindex(columns=stages)  # a blocked request lacks some
    by_encoder = df["input_guard"].str.contains("prompt guard")
    llm_guarded = ~by_encoder & ms["chat"].notna() & ms["output_check"].notna()
    rows = []
    if by_encoder.any():
        screen = ms.loc[by_encoder, "input_check"].median()
        rows.append(("ms per text", "encoder prompt guard (screens a prompt)", screen, "ms"))
    if llm_guarded.any():
        llm = ms[llm_guarded]
        checks = (llm["input_check"] + llm["output_check"]).median()
        rows += [
            ("ms per text", "LLM guard, both checks of a request", checks, "ms"),
            ("ms per text", "chat reply", llm["chat"].median(), "ms"),
            ("guard overhead", "guard checks / chat time", checks / llm["chat"].median(), "x"),
        ]
    return rows


def _serving(server: str) -> Callable[[Path], list[Figure]]:
    def read(path: Path) -> list[Figure]:
        """03's or 10's load test: generated tokens/s over all users, at 1, 4 and 8 users."""
        df = pd.read_csv(path)
        _columns(df, path, ["users", "tokens_per_s"])
        levels = df[df["users"].isin([1, 4, 8])]
        return [
            ("serving tokens/s", f"{server}, {int(r.users)} user(s)", r.tokens_per_s, "tok/s")
            for r in levels.itertuples()
        ]

    return read


def _decode(path: Path) -> list[Figure]:
    """07's benchmark: the fastest configuration's decode speed and its roofline."""
    df = pd.read_csv(path)
    _columns(df, path, ["config", "generated_tps", "roofline_tps"])
    best = df.loc[df["generated_tps"].idxmax()]
    return [
        ("decode tokens/s", f"measured, {best['config']}", best["generated_tps"], "tok/s"),
        ("decode tokens/s", f"roofline, {best['config']}", best["roofline_tps"], "tok/s"),
    ]


SOURCES: tuple[Source, ...] = (
    Source(few_shot.K_SWEEP, _encoder),
    Source(classify.ASSESSMENTS, _llm_classifier),
    Source(loadtest.LOADTEST, _serving("llama_cpp.server")),
    Source(loadtest.LOADTEST_BATCHED, _serving("llama-server -np N")),
    Source(loadtest.SERVICE_LOAD, _serving("service (notebook 10)")),
    Source(loadtest.SERVICE_BATCHED, _serving("llama-server -np N (notebook 10)")),
    Source(audit.AUDIT, _guard),
    Source(bench.BENCH, _decode),
    Source(evaluation.PREDICTION_LOG, _held_out),
    Source(quant_sweep.QUANTIZATION, _quantization),
)


def collect(directory: str | Path | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The figures of the newest file of each kind, and one line per kind with no file.

    A file that cannot be read (written by an older notebook) is a line too, not a crash.
    """
    rows, missing = [], []
    for source in SOURCES:
        kind = source.kind
        path = kind.newest(directory)
        if path is None:
            missing.append(
                f"{kind.what}: no {kind.stem}-*{kind.suffix} in results/ yet; "
                f"run notebook {course.notebook(kind.notebook).file} first."
            )
            continue
        try:
            figures = source.read(path)
        except ValueError as err:
            missing.append(f"{kind.what}: {err}")
            continue
        rows += [_row(figure, kind.notebook, path.name) for figure in figures]
    return pd.DataFrame(rows, columns=COLUMNS), missing


def _row(figure: Figure, notebook: str, file: str) -> tuple:
    """A table row: the figure, for an accuracy on n texts its interval, and its source."""
    topic, measure, value, unit, *texts = figure
    n = low = high = None
    if texts:
        n = texts[0]
        low, high = scoring.wilson(round(value * n), n)
    return topic, measure, value, unit, n, low, high, notebook, file


def _best(table: pd.DataFrame, topic: str, measure_start: str) -> pd.Series | None:
    """The row of `topic` whose measure starts with `measure_start` and whose value is largest."""
    hit = table[(table["topic"] == topic) & table["measure"].str.startswith(measure_start)]
    return None if hit.empty else hit.loc[hit["value"].astype(float).idxmax()]


def _accuracy_text(row: pd.Series) -> str:
    interval = f"95 % interval {row['low']:.2f}-{row['high']:.2f}"
    return f"{row['value']:.3f} ({interval}, {int(row['n'])} texts)"


def encoder_answer(table: pd.DataFrame) -> str:
    """'Would an encoder do the job?' answered from the table's figures only.

    The encoder is compared with the better of the LLM's two ways of classifying, by their
    Wilson intervals: when they overlap, the texts scored cannot tell the two apart, whatever
    the points between them; and per text with the LLM classifier.
    """
    enc = _best(table, "accuracy", "encoder")
    llm = _best(table, "accuracy", "LLM,")
    if enc is None or llm is None:
        need = "notebook 01" if enc is None else "notebook 02"
        return f"Not answerable yet: the table has no accuracy from {need}."
    if enc["low"] > llm["high"]:
        verdict, how = "Yes, on these figures", "more accurate than"
    elif enc["high"] < llm["low"]:
        verdict, how = "Not on accuracy alone", "less accurate than"
    else:
        verdict, how = "Yes, on these figures", "indistinguishable on these texts from"
    accuracy = (
        f"the encoder's accuracy {_accuracy_text(enc)} is {how} the better LLM reading's "
        f"{_accuracy_text(llm)}"
    )
    enc_ms = _best(table, "ms per text", "encoder")
    llm_ms = _best(table, "ms per text", "LLM classifier")
    speed = ""
    if enc_ms is not None and llm_ms is not None:
        ratio = llm_ms["value"] / enc_ms["value"]
        speed = f"; per text the LLM classifier takes {ratio:.1f}x the encoder's time"
    return f"{verdict}: {accuracy}{speed}."


def serving_throughput(table: pd.DataFrame) -> pd.Series:
    """The `serving tokens/s` rows of collect()'s table as tokens/s by (server, users): the
    throughput cost.cost_table() turns into a price per token."""
    rows = table[table["topic"] == "serving tokens/s"]
    parts = rows["measure"].str.extract(r"^(?P<server>.+), (?P<users>\d+) user\(s\)$")
    index = pd.MultiIndex.from_arrays(
        [parts["server"], parts["users"].astype(int)], names=["server", "users"]
    )
    return pd.Series(rows["value"].to_numpy(dtype=float), index=index, name="tokens_per_s")


def plot(table: pd.DataFrame):
    """Four panels (accuracy, ms per text, serving tokens/s, decode vs roofline); an empty
    panel says which notebook fills it."""
    import matplotlib.pyplot as plt

    panels = [
        ("accuracy", "share correct", "01, 02, 08", False),
        ("ms per text", "ms (log scale)", "02, 06, 08", True),
        ("serving tokens/s", "tokens/s, all users", "03", False),
        ("decode tokens/s", "tokens/s, one stream", "07", False),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.5))
    for ax, (topic, unit, notebooks, log) in zip(axes.flat, panels, strict=True):
        rows = table[table["topic"] == topic]
        ax.set_title(topic)
        if rows.empty:
            ax.text(0.5, 0.5, f"no results yet: run notebook {notebooks}", ha="center")
            ax.set_axis_off()
            continue
        errors = None
        if topic == "accuracy":  # the 95 % intervals: overlapping bars are not told apart
            value = rows["value"].astype(float)
            errors = [value - rows["low"].astype(float), rows["high"].astype(float) - value]
        ax.barh(rows["measure"], rows["value"], xerr=errors, color="tab:blue")
        ax.set_xlabel(unit)
        if log:
            ax.set_xscale("log")
        if topic == "accuracy":
            ax.set_xlim(0, 1)
        ax.invert_yaxis()
    fig.tight_layout()
    return fig
