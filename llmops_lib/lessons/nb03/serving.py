"""Notebook 03's serving paths: where a server's speed goes (the engine, HTTP, streaming),
and what continuous batching gains on this machine, read from the load tests' tables."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pandas as pd

from ...core.backend import check_chat_args, chunk_text
from ...core.errors import InputError, check_columns, fraction, whole
from ...planning.tools import ToolsNotBuiltError, say_skipped


def _one_request(backend: Any, messages: list[dict[str, str]], max_tokens: int, stream: bool):
    """(generated tokens, seconds to first text or None, total seconds) of one greedy request."""
    start = time.perf_counter()
    first = None
    if stream:
        tokens = 0
        for chunk in backend.chat(messages, max_tokens=max_tokens, stream=True):
            if chunk_text(chunk):  # llama.cpp's servers send one token per chunk
                first = first or time.perf_counter() - start
                tokens += 1
    else:
        tokens = backend.chat(messages, max_tokens=max_tokens)["usage"]["completion_tokens"]
    return tokens, first, time.perf_counter() - start


def serving_paths(
    session: Any,
    messages: list[dict[str, str]],
    max_tokens: int = 48,
    n_threads: int = 1,
    repeats: int = 3,
) -> pd.DataFrame:
    """One user, one request at a time, along each path from llama.cpp to the client.

    The chat role's GGUF, the same threads and greedy request: llama-cpp-python in this
    process (no HTTP),
    its server `llama_cpp.server`, and llama.cpp's C++ `llama-server`, each asked for the
    whole answer and for a stream of one SSE event per token. Where the tokens/s part ways
    says where a server's lead comes from: the engine, HTTP, or the per-token streaming.
    Medians of `repeats` requests after one warm-up. Without a built llama-server its rows
    stay, with no figures, and a line says why.
    """
    whole("repeats", repeats)
    whole("n_threads", n_threads)
    check_chat_args(messages, max_tokens)  # before three engines are loaded, not after one
    rows = []

    def measure(path: str, backend: Any) -> None:
        for stream in (False, True):
            _one_request(backend, messages, max_tokens, stream)  # warm-up
            runs = [_one_request(backend, messages, max_tokens, stream) for _ in range(repeats)]
            tokens = int(np.median([r[0] for r in runs]))
            total = float(np.median([r[2] for r in runs]))
            ttft = float(np.median([r[1] for r in runs])) * 1000 if stream else math.nan
            way = "streamed (SSE)" if stream and path != "in process" else "streamed"
            rows.append((path, way if stream else "whole answer", tokens, ttft, total))

    same = {"n_ctx": 2048, "n_threads": n_threads}
    with session.model("chat", **same) as model:
        measure("in process", model)
    with session.server("llama_cpp.server", **same) as server:
        measure("llama_cpp.server", server.endpoint())
    try:
        with session.server("llama-server", n_parallel=1, **same) as server:
            measure("llama-server", server.endpoint())
    except ToolsNotBuiltError as err:  # the rows stay, with no figures
        say_skipped(str(err))
        rows += [
            ("llama-server", a, 0, math.nan, math.nan) for a in ("whole answer", "streamed (SSE)")
        ]
    table = pd.DataFrame(rows, columns=["path", "answer", "tokens", "first token ms", "total s"])
    table["tokens/s"] = table["tokens"] / table["total s"]
    return table.set_index(["path", "answer"])


# What each ratio of serving_paths() isolates: (numerator row, denominator row) of its table.
PATH_RATIOS = {
    "HTTP + server around the Python engine": (
        ("llama_cpp.server", "whole answer"),
        ("in process", "whole answer"),
    ),
    "one event per token, Python server": (
        ("llama_cpp.server", "streamed (SSE)"),
        ("llama_cpp.server", "whole answer"),
    ),
    "one event per token, C++ server": (
        ("llama-server", "streamed (SSE)"),
        ("llama-server", "whole answer"),
    ),
    "C++ server vs Python engine in process": (
        ("llama-server", "whole answer"),
        ("in process", "whole answer"),
    ),
}


def path_ratios(paths: pd.DataFrame) -> pd.Series:
    """tokens/s of one serving path over another's (PATH_RATIOS): below 1, what the first
    adds costs speed; above 1, it gains."""
    check_columns("path_ratios()", paths, ["tokens/s"])
    missing = {row for pair in PATH_RATIOS.values() for row in pair} - set(paths.index)
    if missing:
        raise InputError(
            f"path_ratios() needs serving_paths()'s table; it lacks {sorted(missing)}."
        )
    tps = paths["tokens/s"]
    return pd.Series(
        {what: tps[a] / tps[b] for what, (a, b) in PATH_RATIOS.items()},
        name="x the tokens/s",
    )


def in_words(ratios: pd.Series, noise: float = 0.05) -> pd.Series:
    """Each ratio of path_ratios() in words, so a re-run cannot contradict the prose: within
    `noise` of 1 (the spread of a few medians on a shared machine) "no measurable
    difference", else how much faster or slower."""
    fraction("noise", noise)

    def word(ratio: float) -> str:
        if not math.isfinite(ratio):
            return "not measured"
        if abs(ratio - 1) <= noise:
            return f"{ratio:.2f}x: no measurable difference"
        return f"{ratio:.2f}x: {abs(ratio - 1):.0%} {'faster' if ratio > 1 else 'slower'}"

    return ratios.map(word)


def fastest(gains: pd.DataFrame) -> list[str]:
    """batching_gain()'s table read: the fastest configuration for one user and for many,
    and the one with the highest gain with its one-user rank (a gain is a ratio: a slow
    single user alone can make it high)."""
    check_columns("fastest()", gains, ["gain"])
    one, many = gains.columns[0], gains.columns[1]
    best_gain = gains["gain"].idxmax()
    rank = int(gains[one].rank(ascending=False)[best_gain])
    return [
        f"fastest, {one}: {gains[one].idxmax()} ({gains[one].max():.1f})",
        f"fastest, {many}: {gains[many].idxmax()} ({gains[many].max():.1f})",
        f"highest gain: {best_gain} ({gains.loc[best_gain, 'gain']:.2f}x), "
        f"number {rank} of {len(gains)} for 1 user",
    ]


def batching_gain(tables: dict[str, pd.DataFrame], users: int = 4) -> pd.DataFrame:
    """Per server configuration: aggregate tokens/s with 1 user and with `users`, and their
    ratio (what continuous batching gains on this machine; N users could at best give N×)."""
    if not isinstance(tables, dict) or not tables:
        raise InputError("batching_gain() needs {name: load-test summary}, at least one.")
    whole("users", users)
    rows = {}
    for name, table in tables.items():
        check_columns(f"batching_gain() of {name!r}", table, ["tokens_per_s"])
        tps = table["tokens_per_s"]
        if 1 not in tps.index or users not in tps.index:
            raise InputError(
                f"{name!r} has no load level for 1 and {users} users: {list(tps.index)}"
            )
        rows[name] = {
            "tokens/s, 1 user": tps[1],
            f"tokens/s, {users} users": tps[users],
            "gain": tps[users] / tps[1],
        }
    return pd.DataFrame(rows).T
