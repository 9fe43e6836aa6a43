"""The multi-user load test: its bookkeeping on the fake endpoint, timeouts on a hung socket.

The real servers under load are tested in test_native.py (llama-server, one server per
concurrency level) and test_server.py (llama_cpp.server and the openai client).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import threading
from collections.abc import Iterator

import pandas as pd
import pytest
from fakes import FakeChat, FakeEndpoint
from test_service import long_reply, serving, wait_for

from llmops_lib.core.errors import InputError
from llmops_lib.engines.endpoint import Endpoint, EndpointError, connect
from llmops_lib.engines.process import HOST, free_port
from llmops_lib.lessons import loadtest
from llmops_lib.lessons.nb03 import serving as serving_lesson
from llmops_lib.lessons.nb10 import bursts


@pytest.fixture
def endpoint():
    """One slot answering each prompt with 'You said: ...', 1 ms per generated token."""
    return FakeEndpoint(FakeChat(token_delay_s=0.001))


def test_one_row_per_concurrency_level_with_finite_figures(endpoint):
    summary, requests = loadtest.run(endpoint, users=(1, 2, 4), requests_per_user=1, max_tokens=8)
    assert list(summary.index) == [1, 2, 4]
    assert list(summary["requests"]) == [1, 2, 4]
    assert (summary["failed"] == 0).all()
    figures = summary.drop(columns=["requests", "failed"])
    assert all(math.isfinite(v) and v > 0 for v in figures.to_numpy().ravel())
    assert (summary["latency_p95_s"] >= summary["latency_p50_s"]).all()
    assert len(requests) == 7 and (requests["tokens"] == 8).all()  # replies cut at max_tokens
    assert (requests["ttft_s"] <= requests["latency_s"]).all()
    assert (summary["tokens_per_s"] * summary["wall_s"]).round(6).tolist() == [8, 16, 32]
    assert len(endpoint.requests) == 7
    assert loadtest.user_threads_alive() == 0


def test_every_user_sends_its_own_prompts_in_turn(endpoint):
    prompts = [f"prompt {i}" for i in range(5)]
    _, requests = loadtest.run(endpoint, users=(3,), requests_per_user=2, prompts=prompts)
    sent = sorted(m[0]["content"] for m in endpoint.requests)
    # user u's i-th request: prompts[(u + i * users) % len(prompts)]
    assert sent == sorted(prompts[(u + i * 3) % 5] for u in range(3) for i in range(2))
    assert sorted(requests["user"]) == [0, 0, 1, 1, 2, 2] and set(requests["users"]) == {3}
    assert (requests["started_s"] >= 0).all()


def test_failed_requests_are_counted_and_not_timed(endpoint):
    endpoint.fail = lambda messages: "HTTP 503" if messages[0]["content"] == "fail" else None
    rows, wall = loadtest.run_level(endpoint, users=2, requests_per_user=1, prompts=["ok", "fail"])
    failed = [r for r in rows if r.error]
    assert len(rows) == 2 and len(failed) == 1
    assert "HTTP 503" in failed[0].error and math.isnan(failed[0].ttft_s)
    assert failed[0].tokens == 0
    summary = loadtest.level_figures(rows, 2, wall)
    assert summary["failed"] == 1 and summary["requests"] == 2
    ok = next(r for r in rows if not r.error)
    assert summary["latency_p50_s"] == summary["latency_p95_s"] == ok.latency_s
    assert summary["tokens_per_s"] == ok.tokens / wall


def test_a_hung_server_times_out_and_leaves_no_threads():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        sock.listen(16)
        url = f"http://{HOST}:{sock.getsockname()[1]}/v1"
        hung = Endpoint(url, model="any")
        rows, wall = loadtest.run_level(hung, users=2, requests_per_user=1, timeout_s=1)
    assert len(rows) == 2
    assert all(r.error and url in r.error for r in rows)
    summary = loadtest.level_figures(rows, 2, wall)
    assert summary["failed"] == 2 and summary["requests_per_s"] == 0
    assert math.isnan(summary["latency_p50_s"])
    assert loadtest.user_threads_alive() == 0


def test_bad_levels_are_rejected(endpoint):
    with pytest.raises(ValueError, match="users=0"):
        loadtest.run_level(endpoint, users=0)
    with pytest.raises(ValueError, match=r"users=\(\): needs a non-empty"):
        loadtest.run(endpoint, users=())
    assert endpoint.requests == []


def test_summary_is_saved_to_a_new_file_each_time(endpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(loadtest.results, "RESULTS_DIR", tmp_path)
    summary, _ = loadtest.run(endpoint, users=(1,), requests_per_user=1, max_tokens=4)
    first, second = loadtest.save(summary), loadtest.save(summary)
    assert first != second and first.exists() and second.exists()
    assert first.read_text().splitlines()[0].startswith("users,")


def test_plot_draws_each_server_in_one_colour_on_every_panel(endpoint):
    summary, _ = loadtest.run(endpoint, users=(1, 2), requests_per_user=1, max_tokens=4)
    other = summary.assign(tokens_per_s=summary["tokens_per_s"] * 2)
    fig = loadtest.plot({"queue": summary, "batch": other}, title="two servers")
    tokens, _, latency, ttft = fig.axes
    assert [line.get_label() for line in tokens.lines] == ["queue", "batch"]
    assert list(tokens.lines[1].get_ydata()) == list(other["tokens_per_s"])
    for ax in (latency, ttft):
        labels = [line.get_label() for line in ax.lines]
        assert labels == ["queue p50", "queue p95", "batch p50", "batch p95"]
        colours = [line.get_color() for line in ax.lines]
        assert colours[:2] == [tokens.lines[0].get_color()] * 2
        assert colours[2:] == [tokens.lines[1].get_color()] * 2
    assert list(tokens.get_xticks()) == [1, 2]


@contextlib.contextmanager
def ctrl_c_after(seconds: float) -> Iterator[None]:
    """Press Ctrl-C (SIGINT to this process) after `seconds`, with Python's own handler, also
    when the test run inherited SIGINT ignored (a job that a non-interactive shell puts in
    the background does): Ctrl-C must reach Python."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupt = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))
    interrupt.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        interrupt.cancel()
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_cancels_the_queued_requests_and_leaves_no_threads():
    slow = FakeEndpoint(FakeChat(token_delay_s=0.05))  # one slot, 0.4 s per request
    with ctrl_c_after(0.5):
        loadtest.run(slow, users=(4,), requests_per_user=5, max_tokens=8)
    assert loadtest.user_threads_alive() == 0
    # the requests in flight when Ctrl-C came are answered; no user started another one
    assert len(slow.requests) < 20


def test_ctrl_c_hangs_up_the_requests_in_flight_on_a_real_service():
    model = FakeChat(long_reply, n_ctx=512, token_delay_s=0.05)  # 15 s an answer
    with serving(model, 8) as (url, app, _):
        queue = app.state.queue
        with ctrl_c_after(1.0):
            loadtest.run(connect(url + "/v1"), users=(4,), requests_per_user=3, max_tokens=300)
        assert loadtest.user_threads_alive() == 0
        wait_for(lambda: queue.admitted == 0)
    # Ctrl-C came while one request generated and three waited: all four were hung up
    # (none answered to the end, none left holding a place), and no user sent another.
    assert queue.served <= 1 and queue.abandoned == 4
    assert len(model.calls) == 1


def test_path_ratios_divide_the_rows_each_comparison_names():
    import pandas as pd

    index = pd.MultiIndex.from_tuples(
        [(p, a) for p in ("in process", "llama_cpp.server", "llama-server")
         for a in ("whole answer", "streamed (SSE)")],
        names=["path", "answer"],
    )  # fmt: skip
    paths = pd.DataFrame({"tokens/s": [100.0, 90.0, 80.0, 40.0, 120.0, 60.0]}, index=index)
    ratios = serving_lesson.path_ratios(paths)
    assert list(ratios.index) == list(serving_lesson.PATH_RATIOS)
    assert ratios["HTTP + server around the Python engine"] == 0.8
    assert ratios["one event per token, Python server"] == 0.5
    assert ratios["one event per token, C++ server"] == 0.5
    assert ratios["C++ server vs Python engine in process"] == 1.2


def test_batching_gain_is_the_ratio_of_the_two_levels():
    import pandas as pd

    def level(one: float, four: float) -> pd.DataFrame:
        return pd.DataFrame({"tokens_per_s": [one, four]}, index=pd.Index([1, 4], name="users"))

    gain = serving_lesson.batching_gain({"queue": level(50, 55), "batch": level(40, 80)})
    assert gain.loc["batch"].tolist() == [40, 80, 2.0]
    assert gain.loc["queue", "gain"] == pytest.approx(1.1)
    with pytest.raises(ValueError, match="'x' has no load level for 1 and 8 users"):
        serving_lesson.batching_gain({"x": level(1, 2)}, users=8)


def _frame(**columns):
    import pandas as pd

    return pd.DataFrame(columns)


# Empty or malformed input to the load test's parsers and helpers: each a named InputError,
# none a ZeroDivisionError, KeyError, AttributeError or TypeError from inside.
BAD_CALLS = {
    "level figures of no time": lambda: loadtest.level_figures([], 1, 0.0),
    "level figures of NaN time": lambda: loadtest.level_figures([], 1, math.nan),
    "level figures of a string": lambda: loadtest.level_figures("abc", 1, 1.0),
    "level figures of None": lambda: loadtest.level_figures(None, 1, 1.0),
    "burst summary of an empty table": lambda: bursts.burst_summary(_frame()),
    "burst summary of a list": lambda: bursts.burst_summary([200, 429]),
    "burst of no clients": lambda: bursts.burst("http://127.0.0.1:9", 0),
    "burst with no time": lambda: bursts.burst("http://127.0.0.1:9", 1, timeout_s=0),
    "burst to a number": lambda: bursts.burst(5, 1),
    "burst of a text body": lambda: bursts.burst("http://127.0.0.1:9", 1, body="hi"),
    "path ratios of an empty table": lambda: serving_lesson.path_ratios(_frame()),
    "path ratios without the rows": lambda: serving_lesson.path_ratios(
        _frame(**{"tokens/s": [1.0]})
    ),
    "batching gain of nothing": lambda: serving_lesson.batching_gain({}),
    "batching gain of a list": lambda: serving_lesson.batching_gain([1]),
    "batching gain without tokens/s": lambda: serving_lesson.batching_gain({"a": _frame(x=[1])}),
    "plot of nothing": lambda: loadtest.plot({}),
    "plot of a table without figures": lambda: loadtest.plot(_frame(x=[1])),
    "save of a string": lambda: loadtest.save("x"),
    "serving paths with no repeats": lambda: serving_lesson.serving_paths(None, [], repeats=0),
    "serving paths of a string": lambda: serving_lesson.serving_paths(None, "hello"),
    "a level without an endpoint": lambda: loadtest.run_level(None, 1),
}


@pytest.mark.parametrize("case", BAD_CALLS, ids=list(BAD_CALLS))
def test_empty_or_malformed_input_is_a_named_input_error(case):
    with pytest.raises(InputError):
        BAD_CALLS[case]()
    assert loadtest.user_threads_alive() == 0


def test_a_burst_at_an_address_where_nothing_listens_names_it():
    url = f"http://{HOST}:{free_port()}"
    with pytest.raises(EndpointError, match=f"Cannot connect to {url}"):
        bursts.burst(url, 2, timeout_s=5)


def test_watch_metrics_adds_what_the_services_metrics_showed_at_each_level():
    with serving(FakeChat(token_delay_s=0.02), 8) as (url, app, _):
        summary, requests = loadtest.run(
            connect(url + "/v1"),
            users=(1, 3),
            requests_per_user=2,
            max_tokens=8,
            watch_metrics=True,
        )
    tokens = requests.groupby("users")["tokens"].sum()
    assert summary["server_tokens"].tolist() == tokens.tolist()  # the server's count, exactly
    # never more waiting than there are users (between two turns all of them wait briefly)
    assert (summary["server_waiting_max"] <= summary.index).all()
    assert (summary["server_busy_max"] <= 1).all() and (summary["scrapes"] >= 2).all()
    assert (summary["server_latency_p95_s"] > 0).all()


def test_serving_path_ratios_are_put_in_words_against_the_noise():
    ratios = pd.Series({"http": 0.99, "sse": 0.93, "c++": 1.20, "none": math.nan})
    words = serving_lesson.in_words(ratios)
    assert words["http"] == "0.99x: no measurable difference"
    assert words["sse"] == "0.93x: 7% slower" and words["c++"] == "1.20x: 20% faster"
    assert words["none"] == "not measured"
    with pytest.raises(InputError, match="noise"):
        serving_lesson.in_words(ratios, noise=2)


def test_the_highest_gain_is_shown_with_its_single_user_rank():
    gains = pd.DataFrame(
        {"tokens/s, 1 user": [41.5, 63.7, 45.8], "tokens/s, 4 users": [57.0, 99.0, 89.3]},
        index=["one thread", "all cores", "course default"],
    ).assign(gain=lambda d: d.iloc[:, 1] / d.iloc[:, 0])
    assert serving_lesson.fastest(gains) == [
        "fastest, tokens/s, 1 user: all cores (63.7)",
        "fastest, tokens/s, 4 users: all cores (99.0)",
        "highest gain: course default (1.95x), number 2 of 3 for 1 user",
    ]
