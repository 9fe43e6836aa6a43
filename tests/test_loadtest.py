"""The multi-user load test against the real local server (and a hung one)."""

from __future__ import annotations

import math
import socket

import pytest

from llmops_lib import loadtest, server


@pytest.fixture(scope="module")
def endpoint(session):
    with server.LocalServer.for_session(session, n_ctx=512) as local:
        yield server.connect(local.base_url)


def test_one_row_per_concurrency_level_with_finite_figures(endpoint):
    summary, requests = loadtest.run(endpoint, users=(1, 2, 4), requests_per_user=1, max_tokens=8)
    assert list(summary.index) == [1, 2, 4]
    assert list(summary["requests"]) == [1, 2, 4]
    assert (summary["failed"] == 0).all()
    figures = summary.drop(columns=["requests", "failed"])
    assert all(math.isfinite(v) and v > 0 for v in figures.to_numpy().ravel())
    assert (summary["latency_p95_s"] >= summary["latency_p50_s"]).all()
    assert len(requests) == 7 and (requests["tokens"] > 0).all()
    assert (requests["ttft_s"] <= requests["latency_s"]).all()
    assert loadtest.user_threads_alive() == 0


def test_a_hung_server_times_out_and_leaves_no_threads():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((server.HOST, 0))
        sock.listen(16)
        url = f"http://{server.HOST}:{sock.getsockname()[1]}/v1"
        hung = server.Endpoint(url, model="any")
        rows, wall = loadtest.run_level(hung, users=2, requests_per_user=1, timeout_s=1)
    assert len(rows) == 2
    assert all(r.error and url in r.error for r in rows)
    summary = loadtest.summarize(rows, 2, wall)
    assert summary["failed"] == 2 and summary["requests_per_s"] == 0
    assert math.isnan(summary["latency_p50_s"])
    assert loadtest.user_threads_alive() == 0


def test_bad_levels_are_rejected(endpoint):
    with pytest.raises(ValueError, match="users=0"):
        loadtest.run_level(endpoint, users=0)
    with pytest.raises(ValueError, match="users is empty"):
        loadtest.run(endpoint, users=())


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
