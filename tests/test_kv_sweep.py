"""Notebook 09's KV-cache experiment: the table's arithmetic on stand-in tool results, its
rows without the tools, bad arguments, and one real run of the tools on the tiny model."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from llmops_lib.core.errors import InputError, UnknownNameError
from llmops_lib.lessons.nb09 import kv_sweep
from llmops_lib.planning import catalog, provision, tools

TINY = catalog.get("smollm2-135m-instruct")
SMALL = kv_sweep.Settings(n_ctx=256, chunks=1, bench_gen=4, bench_reps=1)
LONG = kv_sweep.Settings(n_ctx=1024, chunks=1, bench_gen=16, bench_reps=1)


def _missing() -> str | None:
    try:
        for name in ("llama-perplexity", "llama-bench"):
            tools.tool_path(name)
    except tools.ToolsNotBuiltError as err:
        return str(err)
    return None


MISSING = _missing()


@pytest.fixture
def stand_ins(monkeypatch):
    """llama-perplexity and llama-bench replaced by what they report, per cache type."""
    mib = {"f16": 22.5, "q8_0": 11.95, "q4_0": 6.33}  # real figures for 1024 cells
    kld = {"q8_0": 0.005, "q4_0": 0.07}
    calls = []

    def perplexity(model, text, n_ctx, chunks, logits_file, n_threads, kv_type):
        calls.append(("reference", kv_type))
        return {"ppl": 25.0, "ppl_err": 1.0, "chunks": 1, "n_ctx": 1024, "kv_mib": mib[kv_type],
                "kv_cells": 1024}  # fmt: skip

    def kl_divergence(model, logits, n_threads, kv_type):
        calls.append(("kld", kv_type))
        return {"ppl": 26.0, "kld": kld[kv_type], "kld_99": 10 * kld[kv_type],
                "same_top_pct": 90.0, "kv_mib": mib[kv_type], "kv_cells": 1024}  # fmt: skip

    def llama_bench(model, n_threads, n_prompt, n_gen, reps, n_depth, kv_type):
        calls.append(("bench", kv_type, n_prompt, n_depth))
        return pd.DataFrame({"tokens_per_s": [{"f16": 50.0, "q8_0": 55.0, "q4_0": 45.0}[kv_type]]})

    monkeypatch.setattr(kv_sweep, "missing", lambda *names: None)
    monkeypatch.setattr(kv_sweep.quantize, "perplexity", perplexity)
    monkeypatch.setattr(kv_sweep.quantize, "kl_divergence", kl_divergence)
    monkeypatch.setattr(kv_sweep.llama_bench, "llama_bench", llama_bench)
    return calls


def test_the_table_puts_the_planner_beside_what_llama_cpp_allocated(stand_ins, tmp_path):
    """Planned per token for SmolLM2 135M (30 layers x 2 x 3 KV heads x 64 dims = 11,520
    values): f16 23,040 bytes, q8_0 12,240, q4_0 6,480. Reported: the MiB llama.cpp prints
    for 1024 cells: 22.5 MiB x 1,048,576 / 1024 = 23,040.0; 11.95 MiB -> 12,236.8;
    6.33 MiB -> 6,481.92 (its two decimals of MiB are about 5 bytes per token here)."""
    table = kv_sweep.measure(tmp_path / "model.gguf", TINY, LONG)
    assert list(table.index) == ["f16", "q8_0", "q4_0"] and list(table.columns) == kv_sweep.COLUMNS
    assert table["planned_bytes_per_token"].tolist() == [23_040, 12_240, 6_480]
    assert table["reported_bytes_per_token"].tolist() == pytest.approx([23_040, 12_236.8, 6_481.92])
    assert table.loc["q8_0", "planned_vs_reported_pct"] == pytest.approx(
        100 * (12_240 / 12_236.8 - 1)
    )
    assert table.loc["q4_0", "size_vs_f16"] == pytest.approx(6.33 / 22.5)
    assert table.loc["f16", ["kld", "same_top_pct"]].tolist() == [0.0, 100.0]
    assert table.loc["q4_0", "kld"] == 0.07 and table.loc["q8_0", "decode_tps"] == 55.0
    assert table.attrs == {"n_ctx": 1024, "scored_tokens": 511}
    # One f16 reference, then each other type against it; decode measured at depth n_ctx.
    assert stand_ins[0] == ("reference", "f16")
    assert [c[1] for c in stand_ins if c[0] == "kld"] == ["q8_0", "q4_0"]
    assert {c[2:] for c in stand_ins if c[0] == "bench"} == {(0, (1024,))}


def test_without_the_tools_the_rows_come_with_no_figures(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLMOPS_CACHE", str(tmp_path / "empty-cache"))
    table = kv_sweep.measure(tmp_path / "never-read.gguf", TINY, kv_sweep.QUICK)
    assert "skipped" in capsys.readouterr().out
    assert list(table.index) == list(kv_sweep.KV_TYPES) and table["kld"].isna().all()


def test_bad_cache_types_are_refused_before_any_tool_runs(tmp_path):
    with pytest.raises(InputError, match="needs 'f16'"):
        kv_sweep.measure(tmp_path / "m.gguf", TINY, kv_sweep.QUICK, kv_types=("q8_0",))
    with pytest.raises(UnknownNameError, match="KV cache type 'q3_k'"):
        kv_sweep.measure(tmp_path / "m.gguf", TINY, kv_sweep.QUICK, kv_types=("f16", "q3_k"))
    with pytest.raises(InputError, match="kv_types"):
        kv_sweep.measure(tmp_path / "m.gguf", TINY, kv_sweep.QUICK, kv_types="f16")


def test_settings_follow_the_profile():
    assert kv_sweep.settings_for("tiny") is kv_sweep.QUICK
    assert kv_sweep.settings_for("colab-t4").n_ctx > kv_sweep.QUICK.n_ctx


@pytest.mark.model
@pytest.mark.skipif(MISSING is not None, reason=f"llama.cpp tools missing: {MISSING}")
def test_the_planner_predicts_what_llama_cpp_allocates_and_fewer_bits_cost_more():
    table = kv_sweep.measure(provision.tiny_gguf(), TINY, SMALL, n_threads=1)
    assert table["planned_vs_reported_pct"].abs().max() < 0.5  # MiB printed to 2 decimals
    assert table.loc["f16", "kld"] == 0
    assert 0 < table.loc["q8_0", "kld"] < table.loc["q4_0", "kld"]
    assert (table["decode_tps"] > 0).all() and all(map(math.isfinite, table["ppl"]))
