"""llama.cpp's quantization tools (notebook 09): log parsers on real output, the errors a
caller can fix, no partial file after a failure, and one real quantize + perplexity run.

The log snippets are cut from real runs of the tools built from llama-cpp-python 0.3.36 on
SmolLM2 135M (`llama-perplexity`, `--kl-divergence`, `llama-quantize`, `llama-imatrix`).
"""

from __future__ import annotations

import json
import math
import struct

import pandas as pd
import pytest

from llmops_lib.core import datasets
from llmops_lib.core.errors import UnknownNameError
from llmops_lib.lessons.nb09 import quant_sweep
from llmops_lib.planning import gguf_header, provision, tools
from llmops_lib.programs import quantize


def _missing(*names: str) -> str | None:
    try:
        for name in names:
            tools.tool_path(name)
    except tools.ToolsNotBuiltError as err:
        return str(err)
    return None


MISSING = _missing("llama-quantize", "llama-perplexity")
needs_tools = pytest.mark.skipif(MISSING is not None, reason=f"llama.cpp tools missing: {MISSING}")
MISSING_IMATRIX = _missing("llama-imatrix")

PERPLEXITY_LOG = """\
0.04.823.604 I perplexity: calculating perplexity over 4 chunks, n_ctx=256, batch_size=256, n_seq=1
0.07.815.344 I perplexity: 2.99 seconds per pass - ETA 0.18 minutes
[1]4.9707,[2]11.7852,[3]15.2909,[4]14.6262,
0.13.577.311 I Final estimate: PPL = 14.6262 +/- 1.86020
"""

KLD_LOG = """\
====== Perplexity statistics ======
Mean PPL(Q)                   :  25.653849 ±   3.329391
Mean PPL(base)                :  14.626109 ±   1.860192
Cor(ln(PPL(Q)), ln(PPL(base))):  83.96%
Mean ln(PPL(Q)/PPL(base))     :   0.561885 ±   0.072805

====== KL divergence statistics ======
Mean    KLD:   0.924635 ±   0.050645
Maximum KLD:   8.806360
99.9%   KLD:   8.699980
99.0%   KLD:   5.443915
Median  KLD:   0.503538

====== Token probability statistics ======
RMS Δp    : 25.151 ± 1.326 %
Same top p: 58.661 ± 2.187 %
"""

TOO_SHORT_PERPLEXITY_LOG = """\
0.08.480.990 E perplexity: you need at least 256 tokens to evaluate perplexity with a context of 128
0.08.480.990 E perplexity: the data file you provided tokenizes to only 17 tokens
"""

TOO_SHORT_IMATRIX_LOG = """\
0.01.287.013 E compute_imatrix: you need at least 256 tokens for a context of 128 tokens
0.01.287.014 E compute_imatrix: the data file you provided tokenizes to only 17 tokens
"""

REQUANTIZE_LOG = (
    "[   3/ 272] blk.0.attn_k.weight                  - [   576,    192,      1,      1], "
    "type =   q4_1, llama_model_quantize: failed to quantize: requantizing from type q4_1 "
    "is disabled\n"
)


def test_perplexity_log_parses():
    assert quantize.parse_perplexity(PERPLEXITY_LOG) == {
        "ppl": 14.6262,
        "ppl_err": 1.86020,
        "chunks": 4,
        "n_ctx": 256,
    }


def test_kl_divergence_log_parses():
    stats = quantize.parse_kl_divergence(KLD_LOG)
    assert stats == {
        "ppl": 25.653849,
        "ppl_base": 14.626109,
        "kld": 0.924635,
        "kld_99": 5.443915,
        "kld_max": 8.806360,
        "same_top_pct": 58.661,
    }


def test_the_excerpt_keeps_what_the_parsers_read_without_timestamps_or_paths():
    log = "0.00.409.619 I perplexity: saving all logits to /tmp/x/reference.logits\n"
    shown = quantize.log_excerpt(log + PERPLEXITY_LOG)
    assert shown.splitlines() == [
        "perplexity: calculating perplexity over 4 chunks, n_ctx=256, batch_size=256, n_seq=1",
        "[1]4.9707,[2]11.7852,[3]15.2909,[4]14.6262,",
        "Final estimate: PPL = 14.6262 +/- 1.86020",
    ]
    kld = quantize.log_excerpt(KLD_LOG).splitlines()
    assert kld[0] == "====== Perplexity statistics ======" and "RMS" not in "".join(kld)
    assert "Mean    KLD:   0.924635 ±   0.050645" in kld and kld[-1].startswith("Same top p:")
    assert quantize.parse_kl_divergence("\n".join(kld)) == quantize.parse_kl_divergence(KLD_LOG)


def test_the_shown_commands_are_the_ones_the_sweep_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMOPS_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "SmolLM2.Q4_1.gguf"
    source.write_bytes(b"GGUF" + bytes(60))
    folder = quant_sweep.source_folder(source)
    names = ["F16", "Q2_K", "Q2_K-imatrix-c256-k4", "imatrix-c256-k4"]
    for name in names:
        (folder / f"{name}.gguf").write_bytes(b"GGUF" + bytes(60))
    files = {"F16": folder / "F16.gguf", "Q2_K": folder / "Q2_K.gguf"}
    files["Q2_K+imatrix"] = folder / "Q2_K-imatrix-c256-k4.gguf"
    shown = quant_sweep.commands(source, files, quant_sweep.QUICK, n_threads=2)
    assert shown["the F16 reference"] == (
        "llama-quantize --allow-requantize SmolLM2.Q4_1.gguf F16.gguf F16 2"
    )
    assert shown["the importance matrix"].startswith("llama-imatrix -m F16.gguf -f lincoln")
    assert "--chunks 4" in shown["the importance matrix"]  # QUICK.imatrix_chunks
    assert shown["Q2_K with it"].startswith("llama-quantize --imatrix imatrix-c256-k4.gguf")
    assert shown["Q2_K against them"] == (
        "llama-perplexity -m Q2_K.gguf --kl-divergence-base reference.logits --kl-divergence "
        "-c 256 -b 256 -t 2"
    )
    assert not any(str(tmp_path) in line for line in shown.values())
    assert quant_sweep.commands(source, {}, quant_sweep.QUICK) == {}  # no tools: no files


def test_a_text_too_short_is_named_although_the_tool_exits_0():
    with pytest.raises(quantize.TextTooShortError, match=r"only 17 tokens.*256 tokens"):
        quantize.parse_perplexity(TOO_SHORT_PERPLEXITY_LOG, n_ctx=128)
    with pytest.raises(quantize.TextTooShortError, match="smaller context"):
        quantize._raise_known_errors("llama-imatrix", TOO_SHORT_IMATRIX_LOG, 128)


def test_a_log_without_its_result_is_an_error():
    cut = PERPLEXITY_LOG.rsplit("\n", 2)[0]  # the run died before its final estimate
    with pytest.raises(RuntimeError, match="no final estimate"):
        quantize.parse_perplexity(cut)
    with pytest.raises(RuntimeError, match="no kld statistic"):
        quantize.parse_kl_divergence(KLD_LOG.replace("Mean    KLD", "Mean KL"))
    few = "0.14.429.128 I kl_divergence: computing over 2 chunks, n_ctx=64, batch_size=64\n"
    with pytest.raises(ValueError, match="fewer than 100 tokens"):
        quantize.parse_kl_divergence(few)


# The load log of `llama-perplexity -fa on -ctk q8_0 -ctv q8_0 -lv 4` on SmolLM2 135M.
KV_CACHE_LOG = """\
0.00.170.571 I llama_context: flash_attn            = enabled
0.00.170.709 I llama_kv_cache:        CPU KV buffer size =     5.98 MiB
0.00.174.653 I llama_kv_cache: size =    5.98 MiB (   512 cells,  30 layers,  1/1 seqs), \
K (q8_0):    2.99 MiB, V (q8_0):    2.99 MiB
0.00.174.683 I llama_kv_cache: attn_rot_k = 1, n_embd_head_k_all = 64
"""


def test_the_kv_cache_llama_cpp_allocated_is_read_from_its_load_log():
    assert quantize.parse_kv_cache(KV_CACHE_LOG) == {"kv_mib": 5.98, "kv_cells": 512}
    with pytest.raises(RuntimeError, match="no 'llama_kv_cache: size' line.*-lv 4"):
        quantize.parse_kv_cache(PERPLEXITY_LOG)


def test_a_cache_type_switches_flash_attention_on_for_every_type():
    assert quantize.cache_args(None) == []
    for kv_type in ("f16", "q4_0"):
        args = quantize.cache_args(kv_type)
        assert args[args.index("-ctk") + 1] == args[args.index("-ctv") + 1] == kv_type
        assert args[args.index("-fa") + 1] == "on" and args[args.index("-lv") + 1] == "4"


def test_an_unknown_cache_type_is_refused_before_any_tool_runs(tmp_path):
    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(b"GGUF\x03\x00\x00\x00")
    with pytest.raises(UnknownNameError, match="KV cache type 'q2_k'"):
        quantize.perplexity(header_only, header_only, kv_type="q2_k")
    logits = tmp_path / "r.logits"
    logits.write_bytes(quantize.LOGITS_MAGIC + struct.pack("<I", 256) + b"\0" * 16)
    with pytest.raises(UnknownNameError, match="KV cache type 'Q8_0'"):
        quantize.kl_divergence(header_only, logits, kv_type="Q8_0")


def test_requantizing_says_what_to_do():
    with pytest.raises(ValueError, match=r"already quantized \(q4_1\).*allow_requantize=True"):
        quantize._raise_known_errors("llama-quantize", REQUANTIZE_LOG)


def test_bad_inputs_are_refused_before_any_tool_runs(tmp_path):
    with pytest.raises(UnknownNameError, match="Q4_K_X.*Q4_K_M"):
        quantize.check_type("Q4_K_X")
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        quantize.quantize(tmp_path / "missing.gguf", tmp_path / "out.gguf", "Q8_0")
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(gguf_header.GGUFError, match="not a GGUF model"):
        quantize.quantize(not_gguf, tmp_path / "out.gguf", "Q8_0")
    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(b"GGUF\x03\x00\x00\x00")
    with pytest.raises(FileNotFoundError, match="no-text.txt"):
        quantize.perplexity(header_only, tmp_path / "no-text.txt")
    with pytest.raises(ValueError, match="chunks=0"):
        quantize.perplexity(header_only, header_only, chunks=0)
    with pytest.raises(ValueError, match="score 62 tokens.*at least 100"):
        quantize.perplexity(header_only, header_only, 64, 2, logits_file=tmp_path / "r.logits")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["header.gguf", "model.gguf"]


def test_the_reference_logits_file_is_checked(tmp_path):
    with pytest.raises(FileNotFoundError, match="logits_file"):
        quantize.logits_context(tmp_path / "none.logits")
    other = tmp_path / "other.logits"
    other.write_bytes(b"GGUF\x03\x00\x00\x00")
    with pytest.raises(ValueError, match="not a llama-perplexity logits file"):
        quantize.logits_context(other)
    good = tmp_path / "good.logits"
    good.write_bytes(quantize.LOGITS_MAGIC + struct.pack("<I", 256) + b"\0" * 16)
    assert quantize.logits_context(good) == 256


def test_a_build_without_llama_imatrix_is_named_and_the_variant_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMOPS_CACHE", str(tmp_path))
    folder = tools.tools_dir()
    folder.mkdir(parents=True)
    older = {t: str(folder / t) for t in tools.TOOLS if t != "llama-imatrix"}
    (folder / "tools.json").write_text(json.dumps({"backend": "cpu", "tools": older}))
    with pytest.raises(tools.ToolsNotBuiltError, match="llama-imatrix is not among.*make setup"):
        tools.tool_path("llama-imatrix")
    assert "llama-imatrix" in quant_sweep.imatrix_unavailable()


def test_settings_follow_the_profile():
    assert quant_sweep.settings_for("tiny") is quant_sweep.QUICK
    assert quant_sweep.settings_for("colab-t4") is quant_sweep.FULL
    assert set(quant_sweep.TYPES) <= set(quant_sweep.FULL.types)
    # The full run also measures every type of the slides' table.
    assert set(quant_sweep.published_quality().columns) - {"F16"} <= set(quant_sweep.FULL.types)


def _table(ppl: dict[str, float], mb: dict[str, float]) -> pd.DataFrame:
    table = pd.DataFrame({"ppl": ppl, "file_mb": mb})
    table["size_vs_f16"] = table["file_mb"] / table.loc["F16", "file_mb"]
    table["ppl_vs_f16_pct"] = 100 * (table["ppl"] / table.loc["F16", "ppl"] - 1)
    return table


def test_the_decision_rule_picks_the_smallest_file_within_the_bound():
    table = _table(
        ppl={"F16": 10.0, "Q8_0": 10.05, "Q4_K_M": 10.4, "Q2_K": 13.0},
        mb={"F16": 270, "Q8_0": 143, "Q4_K_M": 104, "Q2_K": 86},
    )
    assert quant_sweep.smallest_within(table, 1.0) == "Q8_0"
    assert quant_sweep.smallest_within(table, 5.0) == "Q4_K_M"
    assert quant_sweep.smallest_within(table, 50.0) == "Q2_K"
    with pytest.raises(ValueError, match="within -1"):
        quant_sweep.smallest_within(table, -1)
    budgets = quant_sweep.budget_table(table.assign(kld=[0.0, 0.01, 0.2, 1.0]), bounds=(1, 50))
    assert budgets["smallest type"].tolist() == ["Q8_0", "Q2_K"]
    assert budgets["MB"].tolist() == [143, 86] and budgets["KL divergence"].tolist() == [0.01, 1.0]
    assert budgets.index[0] == "perplexity within 1 % of F16"


def test_ours_stand_beside_the_slides_relative_to_each_f16():
    table = _table(ppl={"F16": 10.0, "Q2_K": 15.0}, mb={"F16": 270, "Q2_K": 86})
    side = quant_sweep.beside_published(table)
    published = quant_sweep.published_quality()
    ppl_7b = published.loc[("perplexity", "7B")]
    assert side.loc["Q2_K", ("LLaMA 7B (slides)", "ppl +%")] == pytest.approx(
        100 * (ppl_7b["Q2_K"] / ppl_7b["F16"] - 1)
    )
    assert side.loc["Q2_K", ("ours", "ppl +%")] == pytest.approx(50.0)
    assert side.loc["F16"].to_numpy() == pytest.approx([1, 0, 1, 0, 1, 0])
    assert side[("ours", "ppl +%")].isna().sum() == len(side) - 2  # types we did not measure


def test_weight_summary_refuses_a_cut_file(tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 10, 5))  # counts, then nothing
    with pytest.raises(gguf_header.GGUFError, match="ends inside its header"):
        gguf_header.weight_summary(cut)


@pytest.fixture(scope="module")
def f16(tmp_path_factory):
    """SmolLM2 135M de-quantized to F16 once for the tests below (about 2 s)."""
    folder = tmp_path_factory.mktemp("quant")
    source = provision.tiny_gguf()
    return quantize.quantize(source, folder / "F16.gguf", "F16", allow_requantize=True)


@needs_tools
@pytest.mark.model
def test_a_refused_quantization_leaves_no_file(tmp_path):
    source = provision.tiny_gguf()  # Q4_1: llama-quantize refuses to requantize it
    with pytest.raises(ValueError, match="already quantized"):
        quantize.quantize(source, tmp_path / "Q8_0.gguf", "Q8_0")
    assert list(tmp_path.iterdir()) == []  # the tool's half-written file was removed


@needs_tools
@pytest.mark.model
def test_quantize_then_score_against_the_f16_reference(f16, tmp_path):
    q4 = quantize.quantize(f16, tmp_path / "Q4_0.gguf", "Q4_0", n_threads=2)
    full, small = gguf_header.weight_summary(f16), gguf_header.weight_summary(q4)
    assert full["n_params"] == small["n_params"]
    assert small["bits_per_weight"] < full["bits_per_weight"] / 2
    assert "Q4_0" in small["type_shares"]

    text = datasets.text_path(quant_sweep.EVAL_TEXT)
    logits = tmp_path / "f16.logits"
    base = quantize.perplexity(f16, text, n_ctx=128, chunks=2, logits_file=logits, n_threads=2)
    assert base["chunks"] == 2 and base["n_ctx"] == 128
    assert quantize.logits_context(logits) == 128
    stats = quantize.kl_divergence(q4, logits, n_threads=2)
    assert stats["ppl_base"] == pytest.approx(base["ppl"], rel=1e-4)  # the same tokens
    assert 1 < stats["ppl"] and math.isfinite(stats["ppl"])
    assert 0 < stats["kld"] <= stats["kld_max"]
    assert 0 < stats["same_top_pct"] <= 100
    with pytest.raises(FileExistsError):  # a reference is never overwritten
        quantize.perplexity(f16, text, n_ctx=128, chunks=2, logits_file=logits)


@needs_tools
@pytest.mark.model
@pytest.mark.skipif(MISSING_IMATRIX is not None, reason=f"llama-imatrix: {MISSING_IMATRIX}")
def test_an_importance_matrix_feeds_a_low_bit_quantization(f16, tmp_path):
    text = datasets.text_path(quant_sweep.CALIBRATION_TEXT)
    imatrix = quantize.make_imatrix(f16, text, tmp_path / "imatrix.gguf", 64, 2, n_threads=2)
    q2 = quantize.quantize(f16, tmp_path / "Q2_K.gguf", "Q2_K", imatrix, n_threads=2)
    assert gguf_header.weight_summary(q2)["bits_per_weight"] < 6
    with pytest.raises(quantize.TextTooShortError, match="smaller context"):
        quantize.make_imatrix(f16, text, tmp_path / "too-long.gguf", 4096, 1, n_threads=2)
    assert not (tmp_path / "too-long.gguf").exists()
