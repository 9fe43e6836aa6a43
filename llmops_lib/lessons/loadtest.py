"""Multi-user load test against an OpenAI-compatible endpoint.

N simulated users each send a few chat requests one after another, all users at once.
The figures show what a server does with concurrency: llama.cpp's server answers one
request at a time, so waiting times grow with N while throughput stays flat; servers
with continuous batching (vLLM, TGI) decode many requests together, so throughput
grows with N until the GPU is saturated.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..core import results
from ..core.backend import check_chat_args, chunk_text
from ..core.errors import InputError, check_columns, fraction, non_empty, positive, whole
from ..core.progress import bar as progress_bar
from ..engines import metrics
from ..engines.endpoint import Endpoint, EndpointError, connect
from ..engines.process import ServerProcess
from ..planning.tools import ToolsNotBuiltError, skipped

PROMPTS = (
    "Name three uses of a hospital triage system.",
    "Explain in one sentence what a GPU does.",
    "Give two tips for writing a clear email.",
    "What is the boiling point of water at sea level?",
    "List three European capitals.",
    "Why do quantized models need less memory?",
    "Describe a cat in one sentence.",
    "What does an inference server do?",
)
THREAD_PREFIX = "llmops-user"
# The columns plot() draws from a summary of run() or per_level_servers().
FIGURES = ("tokens_per_s", "requests_per_s", "latency_p50_s", "latency_p95_s", "ttft_p50_s")


@dataclass(frozen=True)
class RequestResult:
    users: int
    user: int
    started_s: float  # since the level started
    ttft_s: float
    latency_s: float
    tokens: int
    error: str | None = None


def _user(
    endpoint: Endpoint,
    users: int,
    user: int,
    requests: int,
    max_tokens: int,
    timeout_s: float,
    t0: float,
    bar: tqdm,
    prompts: Sequence[str],
    stop: threading.Event,
) -> list[RequestResult]:
    """One simulated user: `requests` chats in a row, each bounded by `timeout_s`; no new
    one once `stop` is set."""
    out = []
    for i in range(requests):
        if stop.is_set():
            break
        prompt = prompts[(user + i * users) % len(prompts)]
        started = time.perf_counter() - t0
        try:
            reply = endpoint.timed_chat(
                [{"role": "user", "content": prompt}],
                max_tokens=max_tokens,
                timeout_s=timeout_s,
            )
            out.append(
                RequestResult(
                    users, user, started, reply.ttft_s, reply.total_s, reply.completion_tokens
                )
            )
        except EndpointError as err:
            elapsed = time.perf_counter() - t0 - started
            out.append(RequestResult(users, user, started, math.nan, elapsed, 0, str(err)))
        bar.update(1)
    return out


def _check_level(
    users: object,
    requests_per_user: object,
    max_tokens: object,
    timeout_s: object,
    prompts: object,
    users_name: str = "users",
) -> None:
    """Refuse a level before any thread starts (users=(True,) is not one user)."""
    whole(users_name, users)
    whole("requests_per_user", requests_per_user)
    whole("max_tokens", max_tokens)
    positive("timeout_s", timeout_s)
    if not all(isinstance(p, str) and p.strip() for p in non_empty("prompts", prompts)):
        raise InputError("prompts: needs non-empty strings, one prompt each.")


def _check_levels(
    users: object, requests_per_user: object, max_tokens: object, timeout_s: object, prompts: object
) -> None:
    for i, n in enumerate(non_empty("users", users)):
        _check_level(n, requests_per_user, max_tokens, timeout_s, prompts, f"users[{i}]")


def run_level(
    endpoint: Endpoint,
    users: int,
    requests_per_user: int = 2,
    max_tokens: int = 32,
    timeout_s: float = 120.0,
    prompts: Sequence[str] = PROMPTS,
    bar: tqdm | None = None,
) -> tuple[list[RequestResult], float]:
    """All `users` at once; returns every request's result and the level's wall time.

    The pool is joined before returning (also on errors), so no thread outlives the call;
    each request is bounded by `timeout_s`, so the join is bounded too. On Ctrl-C (or any
    error) no user starts another request, and the requests in flight are hung up
    (Endpoint.hang_up): the call returns at once, and the server sees its clients gone
    instead of generating answers that nobody reads.
    """
    _check_level(users, requests_per_user, max_tokens, timeout_s, prompts)
    if not callable(getattr(endpoint, "timed_chat", None)):
        raise InputError(
            f"endpoint: needs an Endpoint (endpoint.connect(url)), got {type(endpoint).__name__}."
        )
    own_bar = bar is None
    bar = bar or progress_bar(total=users * requests_per_user, desc=f"{users} users", unit="req")
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=users, thread_name_prefix=THREAD_PREFIX)
    t0 = time.perf_counter()
    try:
        futures = [
            pool.submit(
                _user,
                endpoint,
                users,
                u,
                requests_per_user,
                max_tokens,
                timeout_s,
                t0,
                bar,
                prompts,
                stop,
            )  # fmt: skip
            for u in range(users)
        ]
        rows = [row for f in futures for row in f.result()]
    except BaseException:
        stop.set()  # Ctrl-C or an error: cancel what is queued, not wait for all of it
        hang_up = getattr(endpoint, "hang_up", None)  # an in-process fake has no sockets
        if hang_up is not None:
            hang_up()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if own_bar:
            bar.close()
    return rows, time.perf_counter() - t0


def level_figures(rows: list[RequestResult], users: int, wall_s: float) -> dict[str, float]:
    """One line of figures for one concurrency level (failed requests counted, not timed)."""
    if not isinstance(rows, list) or not all(isinstance(r, RequestResult) for r in rows):
        raise InputError("rows: needs the list of RequestResult that run_level() returned.")
    whole("users", users)
    positive("wall_s", wall_s)
    ok = [r for r in rows if r.error is None]
    lat = np.array([r.latency_s for r in ok])
    ttft = np.array([r.ttft_s for r in ok if not math.isnan(r.ttft_s)])
    tokens = sum(r.tokens for r in ok)

    def pct(values: np.ndarray, q: float) -> float:
        return float(np.percentile(values, q)) if len(values) else math.nan

    return {
        "users": users,
        "requests": len(rows),
        "failed": len(rows) - len(ok),
        "wall_s": wall_s,
        "requests_per_s": len(ok) / wall_s,
        "tokens_per_s": tokens / wall_s,
        "latency_p50_s": pct(lat, 50),
        "latency_p95_s": pct(lat, 95),
        "ttft_p50_s": pct(ttft, 50),
        "ttft_p95_s": pct(ttft, 95),
    }


def _levels(
    endpoint_for: Callable[[int], AbstractContextManager[Endpoint]],
    users: Sequence[int],
    requests_per_user: int,
    max_tokens: int,
    timeout_s: float,
    prompts: Sequence[str],
    watch_metrics: bool = False,
) -> Iterator[tuple[dict[str, float], list[RequestResult]]]:
    """Each level in turn under one progress bar: (its figures, its requests).

    Every level is checked before the first endpoint is made (a server started), and each
    endpoint is closed before its level is handed on. `watch_metrics`: the server's
    /metrics is sampled during each level (metrics.Sampler) and its view joins the figures.
    """
    _check_levels(users, requests_per_user, max_tokens, timeout_s, prompts)
    with progress_bar(total=sum(users) * requests_per_user, desc="load test", unit="req") as bar:
        for n in users:
            with endpoint_for(n) as endpoint:
                url = metrics.metrics_url(endpoint.base_url)
                with metrics.Sampler(url) if watch_metrics else nullcontext() as sampler:
                    rows, wall = run_level(
                        endpoint, n, requests_per_user, max_tokens, timeout_s, prompts, bar
                    )
            figures = level_figures(rows, n, wall)
            yield (figures | sampler.view() if watch_metrics else figures), rows


def run(
    endpoint: Endpoint,
    users: Sequence[int] = (1, 2, 4, 8),
    requests_per_user: int = 2,
    max_tokens: int = 32,
    timeout_s: float = 120.0,
    prompts: Sequence[str] = PROMPTS,
    watch_metrics: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run each concurrency level in turn; return (one row per N, one row per request).

    `watch_metrics`: also sample the server's Prometheus /metrics during each level (the
    server_* columns of metrics.Sampler.view(): what a dashboard would have shown).
    """
    levels = list(
        _levels(
            lambda n: nullcontext(endpoint),
            users,
            requests_per_user,
            max_tokens,
            timeout_s,
            prompts,
            watch_metrics,
        )
    )
    summary = [figures for figures, _ in levels]
    requests = [asdict(r) for _, rows in levels for r in rows]
    return pd.DataFrame(summary).set_index("users"), pd.DataFrame(requests)


@contextmanager
def _server_endpoint(start: Callable[[int], ServerProcess], users: int) -> Iterator[Endpoint]:
    """A client of the fresh server `start(users)`, which is stopped on leaving."""
    with start(users) as srv:
        yield connect(srv.base_url)


def per_level_servers(
    start: Callable[[int], ServerProcess],
    users: Sequence[int] = (1, 2, 4, 8),
    requests_per_user: int = 2,
    max_tokens: int = 32,
    timeout_s: float = 120.0,
    watch_metrics: bool = False,
) -> pd.DataFrame:
    """run() with a fresh server per concurrency level N, made by `start(N)`.

    For llama-server, `start = lambda n: session.server("llama-server", n_parallel=n)`
    gives N users N parallel slots, so their requests are decoded together in one batch
    (continuous batching). Every server is stopped before the next one starts.
    Where the server's llama.cpp tool is not built, it prints why and returns the levels
    with no figures (tools.skipped) instead of raising.
    """
    summary = []
    levels = _levels(
        lambda n: _server_endpoint(start, n),
        users,
        requests_per_user,
        max_tokens,
        timeout_s,
        PROMPTS,
        watch_metrics,
    )
    try:
        for figures, _ in levels:
            summary.append(figures)  # level by level: a tool missing later is not a skip
    except ToolsNotBuiltError as err:
        if summary:
            raise
        columns = list(level_figures([], 1, 1.0))[1:]  # without "users"
        columns += list(metrics.VIEW_COLUMNS) if watch_metrics else []
        return skipped(str(err), pd.Index(list(users), name="users"), columns)
    return pd.DataFrame(summary).set_index("users")


def metrics_page(start: Callable[[], ServerProcess]) -> metrics.Scrape | None:
    """One scrape of the /metrics of the server `start()` makes, after one short request
    (so its counters have moved), the server stopped again. None, with a line saying why,
    where its llama.cpp tool is not built."""
    try:
        with start() as server:
            endpoint = connect(server.base_url)
            endpoint.chat([{"role": "user", "content": PROMPTS[0]}], max_tokens=8)
            endpoint.close()
            return metrics.scrape(server.url)
    except ToolsNotBuiltError as err:
        print(f"skipped: {err}")
        return None


def burst(
    url: str,
    clients: int,
    body: dict[str, Any] | None = None,
    path: str = "/generate",
    timeout_s: float = 120.0,
) -> pd.DataFrame:
    """`clients` POSTs released at the same instant; one row each: HTTP status (0: no
    answer within `timeout_s`), seconds, Retry-After. What a bounded queue does with a
    crowd: some answered, the rest told at once to come back (429), none left hanging."""
    import httpx

    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise InputError(f"url={url!r}: needs the service's http:// address.")
    whole("clients", clients)
    positive("timeout_s", timeout_s)
    body = {"prompt": PROMPTS[0], "max_tokens": 16} if body is None else body
    if not isinstance(body, dict):
        raise InputError(f"body: needs a JSON object (a dict), got {type(body).__name__}.")
    if not isinstance(path, str) or not path.startswith("/"):
        raise InputError(f"path={path!r}: needs a path such as /generate.")
    start = threading.Barrier(clients)

    def one(client: httpx.Client, i: int) -> dict[str, Any]:
        start.wait(timeout=timeout_s)
        t0 = time.perf_counter()
        try:
            response = client.post(path, json=body)
        except httpx.ConnectError as err:  # nothing listens: a wrong URL, not a busy service
            raise EndpointError(f"Cannot connect to {url} ({err}); is it running?", url) from None
        except httpx.TransportError:  # a timeout, or the connection dropped: no answer
            status, retry = 0, "nan"
        else:
            status, retry = response.status_code, response.headers.get("Retry-After", "nan")
        return {
            "client": i,
            "status": status,
            "seconds": time.perf_counter() - t0,
            "retry_after_s": float(retry),
        }

    limits = httpx.Limits(max_connections=clients)
    with (
        httpx.Client(base_url=url, timeout=timeout_s, limits=limits) as client,
        ThreadPoolExecutor(max_workers=clients, thread_name_prefix=THREAD_PREFIX) as pool,
    ):
        rows = list(pool.map(lambda i: one(client, i), range(clients)))
    return pd.DataFrame(rows).set_index("client")


def burst_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per HTTP status: how many, and their median and worst time to an answer."""
    check_columns("burst_summary()", frame, ["status", "seconds"])
    return frame.groupby("status")["seconds"].agg(requests="count", p50_s="median", max_s="max")


def user_threads_alive() -> int:
    """Load-test threads still running (0 after run(): nothing is left behind)."""
    return sum(t.name.startswith(THREAD_PREFIX) for t in threading.enumerate())


def plot(summary: pd.DataFrame | dict[str, pd.DataFrame], title: str = "Load test"):
    """Throughput and waiting times against the number of concurrent users.

    Pass {label: summary} to draw several servers on the same axes.
    """
    import matplotlib.pyplot as plt

    summaries = summary if isinstance(summary, dict) else {"": summary}
    if not summaries:
        raise InputError(
            "plot() needs a load-test summary, or {label: summary}, not an empty dict."
        )
    for label, frame in summaries.items():
        check_columns(f"plot() of {label or 'the summary'!r}", frame, FIGURES)
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for i, (label, frame) in enumerate(summaries.items()):
        n, color = frame.index, f"C{i}"  # one colour per server in every panel
        prefix = f"{label} " if label else ""
        axes[0].plot(n, frame["tokens_per_s"], "o-", color=color, label=label or None)
        axes[1].plot(n, frame["requests_per_s"], "o-", color=color, label=label or None)
        for ax, figure in ((axes[2], "latency"), (axes[3], "ttft")):
            ax.plot(n, frame[f"{figure}_p50_s"], "o-", color=color, label=f"{prefix}p50")
            ax.plot(n, frame[f"{figure}_p95_s"], "s--", color=color, label=f"{prefix}p95")
    axes[0].set_title("generated tokens/s (all users)")
    axes[1].set_title("requests/s (all users)")
    axes[2].set_title("request latency (s)")
    axes[3].set_title("time to first token (s)")
    users = sorted({n for frame in summaries.values() for n in frame.index})
    for ax in axes:
        ax.set_xlabel("concurrent users")
        ax.set_xticks(users)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def save(summary: pd.DataFrame, stem: str = "loadtest") -> Path:
    """Write the summary to a new timestamped CSV in results/ (never over an earlier run)."""
    check_columns("save()", summary, ["requests", "failed"])
    return results.save_frame(summary, stem)[0]


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
    model_path: str | Path,
    messages: list[dict[str, str]],
    max_tokens: int = 48,
    n_threads: int = 1,
    repeats: int = 3,
) -> pd.DataFrame:
    """One user, one request at a time, along each path from llama.cpp to the client.

    The same GGUF, threads and greedy request: llama-cpp-python in this process (no HTTP),
    its server `llama_cpp.server`, and llama.cpp's C++ `llama-server`, each asked for the
    whole answer and for a stream of one SSE event per token. Where the tokens/s part ways
    says where a server's lead comes from: the engine, HTTP, or the per-token streaming.
    Medians of `repeats` requests after one warm-up. Without a built llama-server its rows
    stay, with no figures, and a line says why.
    """
    from ..engines.llamacpp import LlamaCppModel
    from ..engines.servers import LlamaServer, LocalServer

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

    with LlamaCppModel(model_path, n_ctx=2048, n_threads=n_threads) as model:
        measure("in process", model)
    with LocalServer(model_path, n_ctx=2048, n_threads=n_threads) as server:
        measure("llama_cpp.server", connect(server.base_url))
    try:
        with LlamaServer(model_path, n_parallel=1, n_ctx=2048, n_threads=n_threads) as server:
            measure("llama-server", connect(server.base_url))
    except ToolsNotBuiltError as err:  # the rows stay, with no figures
        print(f"skipped: {err}")
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
