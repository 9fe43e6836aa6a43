"""The committed outputs are the course as most readers see it (on GitHub): no noise in them,
and the numbers they show agree with each other. Nothing is measured here; the test reads
what `make notebooks` stored.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

# Warnings and hints that teach nothing where they appear; show one on purpose by saying so
# in the prose and printing it from code, not by letting a library write it to stderr.
NOISE = (
    "TqdmWarning",
    "IProgress not found",
    "MatMul8bitLt",
    "full-size SWA cache",
    "pip install kernels",
)
# An absolute path of a machine (this one or a container's): home, temp or checkout folders,
# not part of a URL.
LOCAL_PATH = re.compile(r"(?<![\w./-])(/home/|/root/|/tmp/|/work/|/Users/|/var/folders/)")
MAX_PROGRESS_UPDATES = 10  # a bar that redraws more often than this is spam in a stored output


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def texts(nb: dict) -> Iterator[tuple[int, str, str]]:
    """(cell index, output type, text) for every stored output a reader sees as text."""
    for i, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []):
            kind = out["output_type"]
            if kind == "stream":
                yield i, kind, "".join(out["text"])
            elif kind == "error":
                yield i, kind, "\n".join(out["traceback"])
            else:
                data = out.get("data", {})
                for mime in ("text/plain", "text/html", "text/markdown"):
                    if mime in data:
                        yield i, kind, "".join(data[mime])


def tables(nb: dict) -> Iterator[tuple[int, pd.DataFrame]]:
    """Every stored pandas table, read back from its HTML, with the row labels as index."""
    for i, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []):
            html = "".join(out.get("data", {}).get("text/html", ""))
            if "<table" not in html:
                continue
            for df in pd.read_html(io.StringIO(html), thousands=",", index_col=0):
                if isinstance(df.columns, pd.MultiIndex):  # a named index adds a header row
                    df.columns = [
                        next((p for p in parts if not str(p).startswith("Unnamed")), "")
                        for parts in df.columns
                    ]
                yield i, df


def series(df: pd.DataFrame) -> Iterator[dict[str, object]]:
    """The table's records both ways, so a figure is found whether it is a row or a column."""
    for _, row in df.iterrows():
        yield dict(zip(map(str, df.columns), row, strict=True))
    for j in range(df.shape[1]):
        yield dict(zip(map(str, df.index), df.iloc[:, j], strict=True))


def numeric(record: dict[str, object], key: str) -> float | None:
    value = pd.to_numeric(pd.Series([record.get(key)]), errors="coerce").iloc[0]
    return None if pd.isna(value) else float(value)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_outputs_carry_no_noise(path):
    frames: dict[int, int] = {}
    for i, kind, text in texts(load(path)):
        where = f"{path.name}, cell {i}"
        assert kind != "error", f"{where} stores an error; catch and explain it, or fix it"
        for noise in NOISE:
            assert noise not in text, f"{where} shows {noise!r}: silence it in the library"
        found = LOCAL_PATH.search(text)
        assert not found, f"{where} shows a local path ({found[0]}...); print names, not paths"
        assert str(ROOT) not in text, f"{where} shows the checkout's path; print names"
        frames[i] = frames.get(i, 0) + len(re.findall(r"\d+%\|", text))  # per cell
        assert frames[i] <= MAX_PROGRESS_UPDATES, f"{where} stores {frames[i]} progress frames"


def checks_of_rates(record: dict[str, object]) -> Iterator[tuple[str, float, float]]:
    """(what, stored tokens/s, tokens/s recomputed from the stored count and time)."""
    for key in record:
        name = str(key)
        prefix = name.removesuffix("_tps")
        if name.endswith("_tps") and f"{prefix}_tokens" in record and f"{prefix}_ms" in record:
            tokens, ms = numeric(record, f"{prefix}_tokens"), numeric(record, f"{prefix}_ms")
            if tokens and ms:
                yield name, numeric(record, name), tokens / ms * 1000
    if {"tokens", "ms", "tokens/s"} <= record.keys():
        tokens, ms = numeric(record, "tokens"), numeric(record, "ms")
        if tokens and ms:
            yield "tokens/s", numeric(record, "tokens/s"), tokens / ms * 1000
    if {"generated_tps", "ms_per_token"} <= record.keys():
        ms = numeric(record, "ms_per_token")
        if ms:
            yield "generated_tps", numeric(record, "generated_tps"), 1000 / ms


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_stored_rate_matches_its_count_and_time(path):
    for i, df in tables(load(path)):
        for record in series(df):
            for what, stored, recomputed in checks_of_rates(record):
                # the table rounds each figure to two decimals: allow that, and 1 %
                assert stored == pytest.approx(recomputed, rel=0.01, abs=0.05), (
                    f"{path.name}, cell {i}: {what} = {stored} but its stored tokens and "
                    f"milliseconds give {recomputed:.2f}"
                )


def column_values(name: str, column: str, row: str | None = None) -> list[float]:
    """Every stored value of `column` (only at `row` if given) in any table of notebook `name`."""
    found = [
        float(value)
        for _, df in tables(load(ROOT / "notebooks" / name))
        if column in df.columns and (row is None or row in df.index)
        for value in (df[column] if row is None else [df.loc[row, column]])
    ]
    assert found, f"{name} stores no table with column {column!r}" + (
        f", row {row!r}" if row else ""
    )
    return found


# Where each notebook stores its decode speed: (column, row or None for the whole column).
DECODE_SPEEDS = {
    "04_cpu_only.ipynb": ("tokens/s", "generation (decode)"),
    "05_conversations.ipynb": ("tokens_per_s", None),  # one figure per conversation turn
}


def setup_threads(name: str) -> int:
    """The llama.cpp thread count the setup cell of notebook `name` printed."""
    found = [
        int(m.group(1))
        for _, kind, text in texts(load(ROOT / "notebooks" / name))
        if kind == "stream"
        for m in re.finditer(r"llama\.cpp threads +(\d+)", text)
    ]
    assert found, f"{name}: its setup cell printed no 'llama.cpp threads' line"
    return found[0]


@pytest.mark.parametrize("notebook", DECODE_SPEEDS)
def test_decode_speeds_come_from_an_idle_machine(notebook):
    # The same model, library and thread count on the same machine: a decode speed far below
    # 07's thread sweep at that count means the notebook ran while something else loaded the CPU.
    threads = setup_threads(notebook)
    label = f"{threads} thread{'s' * (threads > 1)}"
    (reference,) = column_values("07_cpu_vs_gpu.ipynb", label, "generated_tps")
    speed = float(pd.Series(column_values(notebook, *DECODE_SPEEDS[notebook])).median())
    assert speed >= reference / 2, (
        f"{notebook} stores {speed:.1f} tokens/s decode (median) with {label}, under half of "
        f"07's {reference:.1f} with {label}: re-execute it with `make notebooks` on an idle machine"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_streamed_text_is_stored_as_one_block_per_cell(path):
    # a streamed answer flushed token by token is stored as one output per token, which
    # GitHub shows as one line per token: make notebooks coalesces them
    for i, cell in enumerate(load(path)["cells"]):
        kinds = [(o["output_type"], o.get("name")) for o in cell.get("outputs", [])]
        repeats = [a for a, b in zip(kinds, kinds[1:], strict=False) if a == b == ("stream", a[1])]
        assert not repeats, f"{path.name}, cell {i}: consecutive {repeats[0][1]} outputs"
