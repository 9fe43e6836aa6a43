"""The memory planner against published figures and against what llama.cpp allocates."""

from __future__ import annotations

import contextlib
import io
import json
import re

import pytest

from llmops_lib.core.errors import InputError, UnknownNameError
from llmops_lib.planning import catalog, memory

LLAMA_8B = catalog.get("llama-3.1-8b-instruct")
LLAMA_70B = catalog.get("llama-3.1-70b-instruct")
GEMMA = catalog.get("gemma-3-270m")  # sliding-window attention (catalog numbers only)
TINY = catalog.get("smollm2-135m-instruct")  # the tiny profile's model, on disk


@pytest.mark.parametrize(("key", "published"), memory.LLAMA31_BLOG_WEIGHTS_GB.items(), ids=str)
def test_weights_match_the_llama31_blog(key, published):
    model, precision = key
    spec = catalog.get(model)
    assert memory.weight_bytes(spec, precision) / memory.GB == pytest.approx(published, rel=0.01)


@pytest.mark.parametrize(("key", "published"), memory.LLAMA31_BLOG_KV_GIB.items(), ids=str)
def test_kv_cache_matches_the_llama31_blog(key, published):
    model, tokens = key
    spec = catalog.get(model)
    got = memory.kv_cache_bytes(spec, tokens) / memory.GIB
    assert got == pytest.approx(published, rel=0.01)


def test_blog_comparison_table_shows_every_published_figure_within_one_percent():
    table = memory.versus_llama31_blog()
    assert list(table.index) == ["FP16", "FP8", "INT4", "KV 1k", "KV 16k", "KV 128k"]
    published = table["published"].stack().sort_values().tolist()
    expected = [*memory.LLAMA31_BLOG_WEIGHTS_GB.values(), *memory.LLAMA31_BLOG_KV_GIB.values()]
    assert published == sorted(expected)
    assert (table["deviation %"].abs() < 1).all().all()


def test_kv_cache_scales_with_batch_and_dtype():
    one = memory.kv_cache_bytes(LLAMA_8B, 4096)
    assert memory.kv_cache_bytes(LLAMA_8B, 4096, batch=4) == 4 * one
    assert memory.kv_cache_bytes(LLAMA_8B, 4096, kv_type="f32") == 2 * one


@pytest.mark.parametrize(
    ("kv_type", "per_token"), [("f16", 23_040), ("q8_0", 12_240), ("q4_0", 6_480)]
)
def test_kv_bytes_per_token_of_each_cache_type_worked_by_hand(kv_type, per_token):
    """SmolLM2 135M: 30 layers, 3 KV heads of 64 dims; K and V: 2 x 3 x 64 x 30 = 11,520
    values per token. f16: 2 bytes each = 23,040. ggml's q8_0 stores a block of 32 values
    in 32 int8 + a 2-byte scale = 34 bytes: 11,520 / 32 x 34 = 12,240. q4_0: 16 bytes of
    nibbles + the scale = 18 bytes per 32: 11,520 / 32 x 18 = 6,480."""
    assert memory.kv_cache_bytes(TINY, 1000, kv_type=kv_type) == 1000 * per_token
    plan = memory.plan(TINY, "fp32", "T4", context_tokens=2000, kv_type=kv_type)
    assert plan.kv_gb == pytest.approx(2000 * per_token / 1e9)


def test_how_much_context_fits_worked_by_hand():
    """Llama 3.1 8B in int8 on a T4: weights 9.08 GB (the planner's figure) x 1.2 with the
    overhead leave 16 - 10.896 = 5.104 GB. Per token its cache holds 2 x 8 KV heads x 128
    dims x 32 layers = 65,536 values: 131,072 bytes in f16, 69,632 in q8_0 (34/32 bytes
    each). 5.104e9 / 131,072 = 38,940 tokens; / 69,632 = 73,300: q8_0 holds 1.88x as much,
    the ratio of 2 to 34/32 bytes."""
    weights = memory.weight_bytes(LLAMA_8B, "int8")
    assert weights / 1e9 == pytest.approx(9.08, abs=0.005)
    free = 16e9 - 1.2 * weights
    for kv_type, per_token in (("f16", 131_072), ("q8_0", 69_632)):
        tokens = memory.max_context(LLAMA_8B, "int8", "T4", kv_type)
        assert tokens == int(free // per_token)
        assert memory.plan(LLAMA_8B, "int8", "T4", tokens, kv_type=kv_type).fits
        assert not memory.plan(LLAMA_8B, "int8", "T4", tokens + 1, kv_type=kv_type).fits
    assert memory.max_context(LLAMA_8B, "int8", "T4", "f16") == pytest.approx(38_940, abs=50)


def test_context_is_capped_at_the_trained_one_and_zero_when_the_weights_do_not_fit():
    assert memory.max_context(TINY, "fp32", "T4") == TINY.max_context
    assert memory.max_context(LLAMA_8B, "bf16", "T4") == 0  # 16 GB of weights alone
    assert memory.max_context(LLAMA_8B, "nf4", "T4", "q8_0") == LLAMA_8B.max_context


def test_the_fit_table_shows_the_context_each_cache_type_buys_on_a_t4():
    table = memory.fit_table([LLAMA_8B], precisions=("bf16", "int8"))
    assert table.loc[("llama-3.1-8b-instruct", "int8"), "T4 context (f16 KV)"] == (
        memory.max_context(LLAMA_8B, "int8", "T4")
    )
    assert table.loc[("llama-3.1-8b-instruct", "int8"), "T4 context (q8_0 KV)"] > 70_000
    assert table.loc[("llama-3.1-8b-instruct", "bf16"), "T4 context (q8_0 KV)"] == "-"
    l4 = memory.fit_table([LLAMA_8B], precisions=("bf16",), context_gpu="L4", kv_types=("q4_0",))
    assert l4.loc[("llama-3.1-8b-instruct", "bf16"), "L4 context (q4_0 KV)"] > 0


def test_an_unknown_cache_type_lists_the_known_ones():
    with pytest.raises(UnknownNameError, match=r"KV cache type 'int8'.*q8_0.*q4_0.*lower case"):
        memory.kv_cache_bytes(TINY, 100, kv_type="int8")
    with pytest.raises(UnknownNameError, match="Q8_0"):
        memory.max_context(TINY, "fp32", "T4", "Q8_0")


def test_sliding_window_layers_stop_growing_past_the_window():
    at_window = memory.kv_cache_bytes(GEMMA, GEMMA.sliding_window)
    doubled = memory.kv_cache_bytes(GEMMA, 2 * GEMMA.sliding_window)
    # only the global layers (3 of 18) grow with the context beyond the window
    assert doubled - at_window == pytest.approx(at_window * GEMMA.global_layers() / GEMMA.n_layers)
    assert memory.kv_cache_bytes(GEMMA, 4096, swa_full=True) > memory.kv_cache_bytes(GEMMA, 4096)


def test_bitsandbytes_keeps_embeddings_unquantized():
    # nf4 on Llama 3.1 8B: the two 128256 x 4096 matrices stay 16-bit, so > 5 GB, not 4 GB
    nf4 = memory.weight_bytes(LLAMA_8B, "nf4") / memory.GB
    assert memory.weight_bytes(LLAMA_8B, "int4") / memory.GB < nf4 < 6
    assert memory.weight_bytes(LLAMA_8B, "nf4") < memory.weight_bytes(LLAMA_8B, "nf4-no-dq")
    assert memory.weight_bytes(LLAMA_8B, "gguf:Q4_K_M") == memory.weight_bytes(LLAMA_8B, "Q4_K_M")


def test_unknown_precision_lists_the_known_ones():
    with pytest.raises(ValueError, match="nf4"):
        memory.weight_bytes(LLAMA_8B, "int3")


def test_context_beyond_training_is_rejected():
    with pytest.raises(ValueError, match="1..8192"):
        memory.kv_cache_bytes(TINY, 40_000)


def test_a_plan_for_a_context_beyond_training_is_refused_not_clamped():
    """It planned the KV cache of 8192 tokens for 40,000 and said 'fits'."""
    with pytest.raises(InputError, match=r"context_tokens=40000 .*1\.\.8192"):
        memory.plan(TINY, "fp16", "T4", context_tokens=40_000)


def test_gpu_by_name_or_by_gb():
    assert memory.gpu_memory_gb("t4") == 16
    assert memory.gpu_memory_gb(12) == 12.0
    with pytest.raises(ValueError, match=r"T4 \(16 GB\).*as a number"):
        memory.gpu_memory_gb("RTX 3090")


def test_verdicts_for_the_workshop_gpus():
    assert not memory.plan(LLAMA_8B, "fp16", "T4").fits  # 16 GB of weights on a 16 GB card
    assert memory.plan(LLAMA_8B, "nf4", "T4").fits
    assert memory.plan(LLAMA_8B, "bf16", "L4").fits
    l4 = memory.plan(LLAMA_8B, "bf16", "L4")
    assert l4.headroom_gb == pytest.approx(24 - l4.total_gb)
    assert memory.plan(LLAMA_8B, "int8", "T4").fits
    assert not memory.plan(LLAMA_70B, "nf4", "T4").fits


def _llama_cpp_kv_mib(n_ctx: int, **kwargs) -> float:
    """KV buffer llama.cpp allocates, read from its load log (it prints one line per cache)."""
    from llama_cpp import Llama

    from llmops_lib.planning import provision

    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        llm = Llama(model_path=str(provision.tiny_gguf()), n_ctx=n_ctx, verbose=True, **kwargs)
        llm.close()
    sizes = re.findall(r"llama_kv_cache: size = +([\d.]+) MiB", log.getvalue())
    assert sizes, "llama.cpp printed no KV cache size"
    return sum(map(float, sizes))


@pytest.mark.model
def test_tiny_kv_estimate_matches_llama_cpp():
    reported = _llama_cpp_kv_mib(2048)
    estimate = memory.kv_cache_bytes(TINY, 2048) / 2**20
    assert estimate == pytest.approx(reported, rel=0.10)


@pytest.mark.model
@pytest.mark.parametrize("kv_type", ["q8_0", "q4_0"])
def test_quantized_kv_estimate_matches_llama_cpp(kv_type):
    import llama_cpp

    ggml_type = getattr(llama_cpp, f"GGML_TYPE_{kv_type.upper()}")
    # A quantized V cache needs flash attention; llama.cpp prints sizes to 0.01 MiB.
    reported = _llama_cpp_kv_mib(1024, type_k=ggml_type, type_v=ggml_type, flash_attn=True)
    estimate = memory.kv_cache_bytes(TINY, 1024, kv_type=kv_type) / 2**20
    assert estimate == pytest.approx(reported, abs=0.01)


@pytest.mark.model
def test_tied_embeddings_flag_matches_the_tiny_models_own_config():
    # The planner counts one unquantized matrix for tied models: the flag must be the model's.
    from llmops_lib.planning import provision

    config = json.loads((provision.tiny_hf_dir() / "config.json").read_text())
    tied = config.get(
        "tie_word_embeddings", config.get("text_config", {}).get("tie_word_embeddings")
    )
    assert tied is not None, "config.json does not say whether the embeddings are tied"
    assert TINY.tied_embeddings == tied
    assert memory.unquantized_params(TINY) == TINY.vocab_size * TINY.hidden_size
