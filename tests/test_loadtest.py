"""The multi-user load test: its bookkeeping on the fake endpoint, timeouts on a hung socket.

The real servers under load are tested in test_native.py (llama-server, one server per
concurrency level) and test_server.py (llama_cpp.server and the openai client).
"""

from __future__ import annotations

import math
import os
import signal
import socket
import threading

import pytest
from fakes import FakeChat, FakeEndpoint

from llmops_lib import loadtest
from llmops_lib.endpoint import Endpoint
from llmops_lib.process import HOST


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


def test_ctrl_c_cancels_the_queued_requests_and_leaves_no_threads():
    slow = FakeEndpoint(FakeChat(token_delay_s=0.05))  # one slot, 0.4 s per request
    # Python's own Ctrl-C handler, also when the test run inherited SIGINT ignored (a job
    # that a non-interactive shell puts in the background does): Ctrl-C must reach Python.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupt = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    interrupt.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            loadtest.run(slow, users=(4,), requests_per_user=5, max_tokens=8)
    finally:
        interrupt.cancel()
        signal.signal(signal.SIGINT, previous)
    assert loadtest.user_threads_alive() == 0
    # the requests in flight when Ctrl-C came are answered; no user started another one
    assert len(slow.requests) < 20


def test_path_ratios_divide_the_rows_each_comparison_names():
    import pandas as pd

    index = pd.MultiIndex.from_tuples(
        [(p, a) for p in ("in process", "llama_cpp.server", "llama-server")
         for a in ("whole answer", "streamed (SSE)")],
        names=["path", "answer"],
    )  # fmt: skip
    paths = pd.DataFrame({"tokens/s": [100.0, 90.0, 80.0, 40.0, 120.0, 60.0]}, index=index)
    ratios = loadtest.path_ratios(paths)
    assert list(ratios.index) == list(loadtest.PATH_RATIOS)
    assert ratios["HTTP + server around the Python engine"] == 0.8
    assert ratios["one event per token, Python server"] == 0.5
    assert ratios["one event per token, C++ server"] == 0.5
    assert ratios["C++ server vs Python engine in process"] == 1.2


def test_batching_gain_is_the_ratio_of_the_two_levels():
    import pandas as pd

    def level(one: float, four: float) -> pd.DataFrame:
        return pd.DataFrame({"tokens_per_s": [one, four]}, index=pd.Index([1, 4], name="users"))

    gain = loadtest.batching_gain({"queue": level(50, 55), "batch": level(40, 80)})
    assert gain.loc["batch"].tolist() == [40, 80, 2.0]
    assert gain.loc["queue", "gain"] == pytest.approx(1.1)
    with pytest.raises(ValueError, match="'x' has no load level for 1 and 8 users"):
        loadtest.batching_gain({"x": level(1, 2)}, users=8)
