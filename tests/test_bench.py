"""The benchmark harness and the roofline: real tiny model, arithmetic on known numbers."""

from __future__ import annotations

import itertools
import json
import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from llmops_lib.commands import bench_cli
from llmops_lib.core.errors import InputError
from llmops_lib.engines.llamacpp import gpu_offload_available, offload_unavailable
from llmops_lib.lessons.nb07 import bench, sweeps
from llmops_lib.planning import provision, roofline

GPU = gpu_offload_available()
CUDA = torch.cuda.is_available()


def test_roofline_arithmetic_on_known_numbers():
    # 4 GB of weights + 1 GB of KV cache read per token over a 100 GB/s bus: 20 tokens/s.
    per_token = roofline.bytes_per_token(4e9, kv_bytes=1e9)
    assert per_token == 5e9
    assert roofline.roofline_tps(100, per_token) == pytest.approx(20)
    assert roofline.roofline_fraction(10, 100, per_token) == pytest.approx(0.5)
    # The slides' 7B Q4_K_S file (3.56 GB) on a 400 GB/s bus: at most ~112 tokens/s.
    assert roofline.roofline_tps(400, 3.56e9) == pytest.approx(112.36, abs=0.01)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: roofline.roofline_tps(0, 1e9), "bandwidth_gbs=0"),
        (lambda: roofline.roofline_tps(100, -5), "bytes=-5"),
        (lambda: roofline.bytes_per_token(1e9, kv_bytes=math.nan), "kv_bytes=nan"),
        (lambda: roofline.roofline_fraction(math.inf, 100, 1e9), "tokens_per_s=inf"),
    ],
)
def test_roofline_rejects_meaningless_input_by_name(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_bandwidth_counts_bytes_read_plus_written(monkeypatch):
    # A clock that advances exactly 1 s per reading: every copy of 10 MB "takes" 1 s,
    # so the bandwidth must be 10 MB read + 10 MB written per second = 0.02 GB/s.
    clock = itertools.count()
    monkeypatch.setattr(roofline, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    assert roofline.memory_bandwidth(size_mb=10, repeats=3) == pytest.approx(0.02)


@pytest.mark.parametrize("threads", [1, 2])
def test_measured_bandwidth_is_finite_and_positive(threads):
    gbs = roofline.memory_bandwidth(size_mb=64, repeats=2, threads=threads)
    assert math.isfinite(gbs) and gbs > 0


def test_published_table_keeps_the_slides_figures():
    table = roofline.published_ms_per_token()
    assert table.loc[("7B", "M2 Max, 8 threads"), "Q4_K_S"] == 36
    assert table.loc[("13B", "RTX 4080, 4 threads"), "Q6_K"] == 30.0
    assert math.isnan(table.loc[("13B", "RTX 4080, 4 threads"), "F16"])  # did not fit in 16 GB
    assert "pull/1684" in roofline.PUBLISHED_SOURCE
    # 3.56 GB of weights every 15.5 ms: the RTX 4080 streamed 230 GB/s.
    streamed = roofline.published_streamed_gbs()
    assert streamed.loc[("7B", "RTX 4080, 4 threads"), "Q4_K_S"] == pytest.approx(229.7)


def test_the_slides_table_is_read_from_its_own_figures():
    reading = roofline.published_reading("7B")
    m2 = reading.loc["M2 Max, 8 threads"]
    assert (m2["GB/s low"], m2["GB/s high"]) == (74.2, 117.1)  # Q2_K and F16: not flat
    # The GPU streams 1.9x (F16) to 2.8x (Q6_K) what the M2 Max with 8 threads does.
    assert m2["RTX 4080 x low"] == pytest.approx(216.7 / 117.1)
    assert m2["RTX 4080 x high"] == pytest.approx(281.4 / 101.0)
    assert m2["data sheet share"] == pytest.approx(117.1 / 400)
    assert math.isnan(reading.loc["Ryzen, 4 threads", "data sheet share"])  # no data sheet
    with pytest.raises(InputError, match="70B"):
        roofline.published_reading("70B")


def test_summary_is_median_and_iqr_per_configuration():
    runs = pd.DataFrame(
        {
            "config": ["a"] * 4 + ["b"] * 4,
            "rep": [0, 1, 2, 3] * 2,
            "load_s": [1.0] * 4 + [2.0] * 4,
            "ttft_s": [0.1, 0.2, 0.3, 0.4] * 2,
            "prompt_tokens": [20] * 8,
            "prompt_tps": [100.0] * 8,
            "generated_tokens": [31] * 8,
            "generated_tps": [10.0, 20.0, 30.0, 40.0, 5.0, 5.0, 5.0, 5.0],
            "ms_per_token": [100.0, 50.0, 1000 / 30, 25.0] + [200.0] * 4,
            "peak_rss_mb": [500.0] * 8,
            "rss_added_mb": [300.0] * 8,
            "weight_bytes": [2.5e8] * 8,
            "gpu_share": [0.0] * 4 + [1.0] * 4,
        }
    )
    summary = bench.summarize(runs)
    assert list(summary.columns) == bench.SUMMARY_COLUMNS
    assert list(summary.index) == ["a", "b"]
    assert summary.loc["a", "generated_tps"] == 25
    assert summary.loc["a", "generated_tps_iqr"] == pytest.approx(32.5 - 17.5)
    assert summary.loc["b", "generated_tps_iqr"] == 0
    assert summary.loc["b", "load_s"] == 2.0
    assert list(summary["gpu_share"]) == [0.0, 1.0]


def test_roofline_points_add_the_kv_cache_of_the_mean_context(session):
    summary = pd.DataFrame(
        {
            "weight_bytes": [1e9],
            "prompt_tokens": [10],
            "generated_tokens": [20],
            "generated_tps": [25.0],
        },
        index=pd.Index(["x"], name="config"),
    )
    point = roofline.roofline_points(summary, session.spec("chat"), bandwidth_gbs=100).loc["x"]
    # SmolLM2 135M: 30 layers x (K + V) x 3 KV heads x 64 dims x 2 bytes, at 10 + 20/2 tokens.
    assert point["kv_bytes"] == 30 * 2 * 3 * 64 * 2 * 20
    assert point["roofline_tps"] == pytest.approx(100e9 / (1e9 + point["kv_bytes"]))
    assert point["roofline_fraction"] == pytest.approx(25 / point["roofline_tps"])


def test_each_row_is_judged_against_the_bus_it_read_from(session):
    summary = pd.DataFrame(
        {
            "weight_bytes": [1e9] * 4,
            "prompt_tokens": [10] * 4,
            "generated_tokens": [20] * 4,
            "generated_tps": [25.0] * 4,
            "gpu_share": [0.0, 1.0, 0.5, math.nan],
        },
        index=pd.Index(["cpu", "gpu", "split", "served"], name="config"),
    )
    spec = session.spec("chat")
    points = roofline.roofline_points(summary, spec, bandwidth_gbs=30, gpu_gbs=300)
    assert list(points["bus"]) == ["CPU", "GPU", "CPU+GPU", "unknown"]
    assert math.isnan(points.loc["served", "roofline_tps"])  # a server that does not say
    per_token = points["bytes_per_token"]
    assert points.loc["cpu", "roofline_tps"] == pytest.approx(30e9 / per_token["cpu"])
    assert points.loc["gpu", "roofline_tps"] == pytest.approx(300e9 / per_token["gpu"])
    assert math.isnan(points.loc["split", "roofline_tps"])  # two buses: no single roof
    # a GPU row without the GPU's bandwidth gets no roofline, never the CPU's
    cpu_only = roofline.roofline_points(summary, spec, bandwidth_gbs=30)
    assert math.isnan(cpu_only.loc["gpu", "roofline_tps"])


@pytest.mark.skipif(CUDA, reason="checks the answer on machines without a CUDA GPU")
def test_gpu_bandwidth_is_none_without_a_gpu():
    assert roofline.gpu_memory_bandwidth() is None


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_gpu_bandwidth_is_far_above_a_cpus():
    assert roofline.gpu_memory_bandwidth(size_mb=256) > 100  # GB/s: T4 320, H100 3,350


@pytest.mark.parametrize("rounds", [0, -1])
def test_bench_command_refuses_zero_rounds_before_loading(rounds, monkeypatch):
    monkeypatch.setattr(sweeps, "bench", lambda *a, **k: pytest.fail("loaded a model"))
    session = SimpleNamespace(model=lambda **kw: pytest.fail("loaded a model"))
    with pytest.raises(ValueError, match=f"rounds={rounds}"):
        sweeps.library_vs_raw(session, rounds=rounds)


def test_offload_plan_is_none_half_all():
    assert sweeps.offload_plan(18) == {"0 layers (CPU)": 0, "9 of 18 layers": 9, "all layers": -1}
    with pytest.raises(ValueError, match="n_layers=0"):
        sweeps.offload_plan(0)


@pytest.mark.model
def test_bench_gives_finite_positive_figures_with_the_documented_columns(
    session, tiny_chat, one_thread
):
    expected_prompt = tiny_chat.count_tokens(bench.MESSAGES)
    runs = bench.bench(
        lambda: session.model(n_ctx=512, **one_thread), "tiny", max_tokens=8, reps=2, warmup=1
    )
    gpu_columns = ["peak_gpu_mb"] if "peak_gpu_mb" in runs else []
    assert list(runs.columns) == bench.RUN_COLUMNS + gpu_columns
    assert len(runs) == 2 and set(runs["config"]) == {"tiny"}
    figures = runs.drop(columns=["config", "rep"])
    assert figures.drop(columns="gpu_share").map(lambda v: math.isfinite(v) and v > 0).all().all()
    assert (runs["gpu_share"] == (1.0 if GPU else 0.0)).all()  # all layers where they ran
    # Every repetition processed the whole prompt again (no reuse of the cached prefix).
    assert (runs["prompt_tokens"] == expected_prompt).all()
    assert (runs["ms_per_token"] * runs["generated_tps"]).round(6).eq(1000).all()
    file_bytes = session.model_path("chat").stat().st_size  # tensors + metadata (tokenizer)
    assert runs["weight_bytes"].between(0.9 * file_bytes, file_bytes).all()
    summary = bench.summarize(runs)
    assert list(summary.columns) == bench.SUMMARY_COLUMNS + gpu_columns
    assert summary.loc["tiny", "generated_tps"] == runs["generated_tps"].median()


@pytest.mark.model
def test_bench_runs_the_transformers_backend_too(session):
    runs = bench.bench(
        lambda: session.load(provision.tiny_chat().key, "transformers", "fp32", n_ctx=512),
        "hf",
        max_tokens=6,
        reps=1,
    )
    figures = runs.drop(columns=["config", "rep"])
    assert figures.drop(columns="gpu_share").map(lambda v: math.isfinite(v) and v > 0).all().all()
    assert (runs["gpu_share"] == (1.0 if CUDA else 0.0)).all()
    # fp32: four bytes for each of the 268 M parameters (embeddings shared with the head)
    assert runs.loc[0, "weight_bytes"] == pytest.approx(
        4 * session.spec("chat").params_b * 1e9, rel=0.01
    )


@pytest.mark.model
def test_bench_command_prints_library_vs_raw_summary(session, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    summary = bench_cli.main(
        ["--rounds", "2", "--max-tokens", "8", "--threads", "1", "--bench-reps", "1"]
    )
    printed = capsys.readouterr().out
    assert json.loads(printed[: printed.rindex("}") + 1]) == summary
    assert summary["prompt_tokens"] > 0 and summary["generated_tokens"] > 0
    assert summary["library_raw_ratio_iqr"] >= 0
    ratios = (
        "library_raw_ratio",
        "library_raw_ratio_best",
        "library_raw_ratio_wall",
        "library_llama_bench_ratio",
        "llama_bench_tg_tps",
    )
    for key in ("library_tps", "raw_tps", *ratios):
        assert math.isfinite(summary[key]) and summary[key] > 0, key
    if summary["n_gpu_layers"] == 0:
        assert 0 < summary["roofline_fraction"] and math.isfinite(summary["roofline_fraction"])
    assert list((tmp_path / "results").glob("bench-*.json"))


@pytest.mark.skipif(GPU, reason="checks the error given on machines without GPU offload")
def test_offload_sweep_without_gpu_says_why(session):
    reason = offload_unavailable()
    assert reason and ("CPU-only build" in reason or "no CUDA GPU" in reason)
    with pytest.raises(RuntimeError, match="Cannot sweep n_gpu_layers: " + reason[:20]):
        sweeps.offload_sweep(session)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU and a CUDA build of llama-cpp-python")
def test_offload_sweep_on_gpu_reports_gpu_memory(session):
    assert offload_unavailable() is None
    runs = sweeps.offload_sweep(session, max_tokens=8, reps=1)
    summary = bench.summarize(runs)
    assert len(summary) == 3
    assert (summary["peak_gpu_mb"] > 0).all() and (summary["generated_tps"] > 0).all()


def test_plots_draw_one_roofline_per_bandwidth():
    import matplotlib.pyplot as plt

    points = pd.DataFrame(
        {"label": ["a", "b"], "bytes_per_token": [2.5e8, 1e9], "generated_tps": [40.0, 8.0]}
    )
    ax = roofline.plot_roofline({"1 thread": 10.0, "2 threads": 15.0}, points)
    assert len(ax.get_lines()) == 2 and len(ax.collections) == 2
    with_gpu = roofline.plot_roofline({"1 thread": 10.0}, points, gpu_gbs=300.0)
    assert [line.get_label() for line in with_gpu.get_lines()] == [
        "roofline 1 thread: 10.0 GB/s",
        "roofline GPU memory: 300.0 GB/s",
    ]
    summary = pd.DataFrame({"generated_tps": [40.0], "generated_tps_iqr": [2.0]}, index=["a"])
    assert len(bench.plot_summary(summary).patches) == 1
    plt.close("all")


@pytest.mark.parametrize("option", ["--rounds", "--max-tokens", "--threads"])
@pytest.mark.parametrize("value", ["0", "-3", "2.5", "many"])
def test_bench_cli_refuses_a_bad_count_before_loading_anything(option, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_cli.main([option, value])
    assert exit_info.value.code == 2
    assert f"argument {option}: '{value}' is not a whole number >= 1" in capsys.readouterr().err


@pytest.mark.model
def test_library_vs_raw_drives_one_engine_so_the_model_is_held_once(session, monkeypatch):
    """Two engines would hold the weights twice: Llama 3 8B Q6_K on a T4 would not fit
    (gpu_plan.peaks('07') plans one)."""
    import llama_cpp

    built = []

    class Counted(llama_cpp.Llama):
        def __init__(self, *args, **kwargs):
            built.append(kwargs.get("model_path"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(llama_cpp, "Llama", Counted)
    summary = sweeps.library_vs_raw(session, n_threads=1, max_tokens=4, rounds=1, n_ctx=512)
    # llama.cpp counts the tokens it decoded: the first comes from the prompt's pass
    assert len(built) == 1 and 1 <= summary["generated_tokens"] <= 4
