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
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..core import results
from ..core.errors import EndpointError, InputError, check_columns, non_empty, positive, whole
from ..core.progress import bar as progress_bar
from ..planning.tools import ToolsNotBuiltError, say_skipped, skipped
from . import metrics

if TYPE_CHECKING:  # types only
    from tqdm import tqdm

    from ..engines.endpoint import Endpoint
    from ..engines.process import ServerProcess

# The load tests' tables (save()), by the notebook and the server they measured.
LOADTEST = results.Kind("loadtest", ".csv", "03", "serving, one request at a time")
LOADTEST_BATCHED = results.Kind(
    "loadtest-llama-server", ".csv", "03", "serving with continuous batching"
)
SERVICE_LOAD = results.Kind(
    "10-loadtest-service", ".csv", "10", "serving through the course's service"
)
SERVICE_BATCHED = results.Kind(
    "10-loadtest-llama-server", ".csv", "10", "serving with continuous batching, beside the service"
)

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
        yield srv.endpoint()


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
            endpoint = server.endpoint()
            endpoint.chat([{"role": "user", "content": PROMPTS[0]}], max_tokens=8)
            endpoint.close()
            return metrics.scrape(server.url)
    except ToolsNotBuiltError as err:
        say_skipped(str(err))
        return None


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


def save(summary: pd.DataFrame, kind: results.Kind = LOADTEST) -> Path:
    """Write the summary as a new timestamped file of `kind` in results/ (never over an
    earlier run): LOADTEST, LOADTEST_BATCHED (03), SERVICE_LOAD, SERVICE_BATCHED (10)."""
    check_columns("save()", summary, ["requests", "failed"])
    if not isinstance(kind, results.Kind):
        raise InputError(f"kind={kind!r}: pass one of loadtest's kinds, e.g. loadtest.LOADTEST.")
    return kind.save_frame(summary)[0]
