"""Read a server's Prometheus `/metrics` the way a dashboard does: scrape, subtract, estimate.

Both servers of notebook 10 publish one: the course's service (`service.Metrics`, written
with prometheus-client) and llama-server (`--metrics`). A dashboard never reads a counter's
value, only how much it grew between two scrapes, and it estimates latency percentiles
from histogram buckets (PromQL's `histogram_quantile`), which is what these functions do.
The text format is parsed by prometheus-client's own parser.

    before = metrics.scrape(server.url)
    ...                                             # traffic
    after = metrics.scrape(server.url)
    metrics.delta(before, after, "llmops_requests_total", status="429")
"""

from __future__ import annotations

import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

from ..core.errors import InputError, fraction, positive

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Scrape:
    """One reading of /metrics: every sample by (name, labels), and when it was taken."""

    at: float  # time.monotonic()
    samples: Mapping[tuple[str, Labels], float]

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}

    def value(self, name: str, **labels: str) -> float:
        """The sum of `name`'s samples whose labels include `labels` (0 if there are none)."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= set(ls))


def parse(text: str) -> Scrape:
    """Prometheus text format (as /metrics sends it) into a Scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    if not isinstance(text, str):
        raise InputError(f"parse() needs the text of a /metrics page, got {type(text).__name__}.")
    samples: dict[tuple[str, Labels], float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    except ValueError as err:
        raise InputError(f"Not the Prometheus text format: {err}") from None
    return Scrape(time.monotonic(), samples)


def scrape(url: str, timeout_s: float = 5.0) -> Scrape:
    """GET `url` + /metrics (a server's root URL, or the /metrics URL itself) and parse it."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise InputError(f"url={url!r}: needs a server's http:// address.")
    positive("timeout_s", timeout_s)
    address = url.rstrip("/")
    address = address if address.endswith("/metrics") else address + "/metrics"
    try:
        with urllib.request.urlopen(address, timeout=timeout_s) as response:
            text = response.read().decode("utf-8")
    except urllib.error.HTTPError as err:
        hint = " (llama-server publishes it only with --metrics)" if err.code in (404, 501) else ""
        raise InputError(f"{address} answered HTTP {err.code}{hint}.") from None
    except (urllib.error.URLError, OSError) as err:
        raise InputError(f"Cannot read {address}: {err}. Is the server running?") from None
    return parse(text)


def delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    """How much a counter grew between two scrapes (what a dashboard's increase() shows)."""
    return after.value(name, **labels) - before.value(name, **labels)


def _buckets(scrape: Scrape, name: str, labels: dict[str, str]) -> dict[float, float]:
    wanted = set(labels.items())
    out: dict[float, float] = {}
    for (n, ls), value in scrape.samples.items():
        if n == f"{name}_bucket" and wanted <= set(ls):
            le = float(dict(ls)["le"])
            out[le] = out.get(le, 0.0) + value
    return out


def histogram_quantile(q: float, before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    """The q-quantile of what a histogram observed between two scrapes, estimated from its
    buckets like PromQL's histogram_quantile: linear within the bucket that holds it, the
    highest finite bound when it falls in +Inf. NaN when nothing was observed."""
    fraction("q", q)
    start, end = _buckets(before, name, labels), _buckets(after, name, labels)
    if not end:
        raise InputError(f"{name!r} is not a histogram in this scrape (no {name}_bucket samples).")
    bounds = sorted(end)
    counts = [end[b] - start.get(b, 0.0) for b in bounds]  # cumulative
    total = counts[-1]
    if total <= 0:
        return math.nan
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


@dataclass(frozen=True)
class Names:
    """Where a server's /metrics says what a dashboard asks (None: it does not say)."""

    waiting: str
    busy: str
    tokens: str
    latency: str | None


SERVICE = Names(
    "llmops_queue_waiting",
    "llmops_queue_generating",
    "llmops_generated_tokens_total",
    "llmops_request_duration_seconds",
)
LLAMA_SERVER = Names(
    "llamacpp:requests_deferred",
    "llamacpp:requests_processing",
    "llamacpp:tokens_predicted_total",
    None,
)


def names_of(scrape: Scrape) -> Names:
    """The course's service or llama-server, told apart by what their scrape holds."""
    for names in (SERVICE, LLAMA_SERVER):
        if names.waiting in scrape.names():
            return names
    raise InputError(
        "This /metrics is neither the course's service (llmops_*) nor llama-server's "
        "(llamacpp:*); no queue gauge found."
    )


@dataclass
class Sampler:
    """Scrapes `url` every `interval_s` seconds in a thread while the `with` block runs.

    Gauges (the queue) only show at the moment of a scrape, so they are sampled; counters
    and histograms need only the first and the last scrape, both taken here.
    """

    url: str
    interval_s: float = 0.1
    scrapes: list[Scrape] = field(default_factory=list)

    def __post_init__(self) -> None:
        positive("interval_s", self.interval_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.scrapes.append(scrape(self.url))
            except InputError as err:  # one missed scrape is a gap, not a failed load test
                self.errors.append(str(err))

    def __enter__(self) -> Sampler:
        self.scrapes.append(scrape(self.url))
        self._thread = threading.Thread(target=self._run, name="llmops-metrics", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.scrapes.append(scrape(self.url))

    def view(self, route: str = "/v1/chat/completions") -> dict[str, float]:
        """What a dashboard shows for the sampled span: queue depth (requests waiting, mean
        and highest sample), the most requests generating at once, tokens generated, and
        p95 latency from the server's own histogram of `route` (NaN where it has none)."""
        if len(self.scrapes) < 2:
            raise InputError("Sampler.view() needs a finished `with` block (two scrapes or more).")
        first, last = self.scrapes[0], self.scrapes[-1]
        names = names_of(last)
        waiting = [s.value(names.waiting) for s in self.scrapes]
        p95 = math.nan
        if names.latency is not None:
            p95 = histogram_quantile(0.95, first, last, names.latency, route=route)
        figures = (
            sum(waiting) / len(waiting),
            max(waiting),
            max(s.value(names.busy) for s in self.scrapes),
            delta(first, last, names.tokens),
            p95,
            len(self.scrapes),
        )
        return dict(zip(VIEW_COLUMNS, figures, strict=True))


# What Sampler.view() adds to a load test's figures.
VIEW_COLUMNS = (
    "server_waiting_mean",
    "server_waiting_max",
    "server_busy_max",
    "server_tokens",
    "server_latency_p95_s",
    "scrapes",
)


def metrics_url(base_url: str) -> str:
    """/metrics of the server behind an OpenAI base URL (http://host:port/v1)."""
    if not isinstance(base_url, str):
        raise InputError(f"base_url={base_url!r}: needs a server's http:// address.")
    root = base_url.rstrip("/")
    return root.removesuffix("/v1") + "/metrics"


# What a dashboard asks, and the sample each server answers it with.
QUESTIONS = {
    "requests by route and status": ("llmops_requests_total", None),
    "requests waiting (queue depth)": (SERVICE.waiting, LLAMA_SERVER.waiting),
    "requests generating": (SERVICE.busy, LLAMA_SERVER.busy),
    "refused, queue full (429)": ("llmops_queue_refusals_total", None),
    "latency histogram": ("llmops_request_duration_seconds_count", None),
    "time to first token histogram": ("llmops_time_to_first_token_seconds_count", None),
    "tokens/s per request histogram": ("llmops_generation_tokens_per_second_count", None),
    "average generation tokens/s": (None, "llamacpp:predicted_tokens_seconds"),
    "tokens generated": (SERVICE.tokens, LLAMA_SERVER.tokens),
    "model load time": ("llmops_model_load_seconds", None),
}


def side_by_side(service: Scrape, llama_server: Scrape | None) -> pd.DataFrame:
    """Per dashboard question, the sample each server answers it with ('-' where its scrape
    holds none; 'not built' for a llama-server that could not run): what a team gets from
    each /metrics without writing code."""
    for label, scrape in (("service", service), ("llama_server", llama_server)):
        if scrape is not None and not isinstance(scrape, Scrape):
            raise InputError(f"{label}: needs a metrics.Scrape, got {type(scrape).__name__}.")

    def shown(scrape: Scrape | None, name: str | None) -> str:
        if scrape is None:
            return "not built"
        return name if name is not None and name in scrape.names() else "-"

    rows = {
        question: {
            "course service": shown(service, ours),
            "llama-server --metrics": shown(llama_server, theirs),
        }
        for question, (ours, theirs) in QUESTIONS.items()
    }
    return pd.DataFrame(rows).T.rename_axis("question")


def plot_dashboard(summaries: dict[str, pd.DataFrame], title: str = "What /metrics showed"):
    """Queue depth and p95 latency against offered load (users), one colour per server:
    from /metrics (solid) and, for latency, as the load test's clients measured it (dashed).

    `summaries`: {label: loadtest summary with the server_* columns of Sampler.view()}.
    """
    import matplotlib.pyplot as plt

    fig, (queue, latency) = plt.subplots(1, 2, figsize=(11, 3.6))
    for i, (label, frame) in enumerate(summaries.items()):
        missing = {"server_waiting_mean", "server_waiting_max", "latency_p95_s"} - set(frame)
        if missing:
            raise InputError(f"{label!r}: no {', '.join(sorted(missing))} (watch_metrics=True?)")
        users, color = frame.index, f"C{i}"
        queue.plot(users, frame["server_waiting_mean"], "o-", color=color, label=f"{label} mean")
        queue.plot(users, frame["server_waiting_max"], "s--", color=color, label=f"{label} max")
        if frame["server_latency_p95_s"].notna().any():
            latency.plot(
                users, frame["server_latency_p95_s"], "o-", color=color, label=f"{label} /metrics"
            )
        latency.plot(users, frame["latency_p95_s"], "s--", color=color, label=f"{label} clients")
    queue.set_title("requests waiting (sampled from /metrics)")
    latency.set_title("p95 request latency (s)")
    for ax in (queue, latency):
        ax.set_xlabel("concurrent users (offered load)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
