"""transformers backend: checks before loading, the tiny model in fp32/int8/nf4, chat protocol."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from llmops_lib.core.errors import UnknownNameError
from llmops_lib.core.hardware import detect
from llmops_lib.engines import hf, registry
from llmops_lib.planning import catalog, memory, provision

TINY = catalog.get("smollm2-135m-instruct")
LLAMA_8B = catalog.get("llama-3.1-8b-instruct")
LLAMA_70B = catalog.get("llama-3.1-70b-instruct")
MESSAGES = [
    {"role": "system", "content": "Answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture(scope="module")
def cpu():
    return replace(detect(check_token=False), gpu_name=None, gpu_vram_gb=None, bf16=False)


@pytest.fixture(scope="module")
def t4(cpu):
    return replace(cpu, gpu_name="Tesla T4", gpu_vram_gb=15.8, compute_capability=(7, 5))


@pytest.fixture(scope="module")
def l4(cpu):
    return replace(
        cpu, gpu_name="NVIDIA L4", gpu_vram_gb=23.7, compute_capability=(8, 9), bf16=True
    )


@pytest.fixture(scope="module")
def tiny_fp32(tiny_hf):
    """The session's fp32 transformers model (conftest), loaded once for all test files."""
    assert (tiny_hf.spec, tiny_hf.precision) == (TINY, "fp32")
    return tiny_hf


def test_bf16_on_a_t4_fails_naming_fp16(t4):
    with pytest.raises(hf.PrecisionError, match=r"no bfloat16.*fp16.*nearest option"):
        hf.check(LLAMA_8B, "bf16", t4)


def test_too_big_for_the_gpu_names_the_precision_that_fits(t4):
    with pytest.raises(hf.PrecisionError, match=r"needs about 19\.\d GB.*precision='int8'"):
        hf.check(LLAMA_8B, "fp16", t4)
    with pytest.raises(hf.PrecisionError, match="use a smaller model"):
        hf.check(LLAMA_70B, "nf4", t4)


def test_4bit_without_bitsandbytes_kernels_for_the_device(t4, monkeypatch):
    monkeypatch.setattr(hf, "bitsandbytes_devices", lambda: {"cpu"})
    with pytest.raises(hf.PrecisionError, match=r"bitsandbytes.*'cuda'.*nearest.*'fp16'"):
        hf.check(catalog.get("llama-3.2-3b-instruct"), "nf4", t4)


def test_checks_run_before_any_download(t4, no_network):
    with pytest.raises(hf.PrecisionError):
        registry.engine("transformers").model(LLAMA_8B, t4, "fp16", {})


def test_unknown_precision(cpu):
    with pytest.raises(UnknownNameError, match="'int4'.*fp32, fp16, bf16, int8, nf4"):
        hf.check(TINY, "int4", cpu)


def test_workshop_profiles_pass_the_checks(t4, l4):
    assert hf.check(LLAMA_8B, "nf4", t4).fits
    assert hf.check(catalog.get("llama-3.2-3b-instruct"), "fp16", t4).fits
    assert hf.check(LLAMA_8B, "bf16", l4).fits


def test_compute_dtype_follows_the_hardware(cpu, t4, l4):
    assert hf.compute_dtype("nf4", t4) == torch.float16
    assert hf.compute_dtype("nf4", l4) == torch.bfloat16
    assert hf.compute_dtype("int8", cpu) == torch.float32
    assert hf.compute_dtype("nf4", cpu) == torch.float32
    assert hf.compute_dtype("fp16", l4) == torch.float16


@pytest.mark.model
def test_measured_footprint_matches_the_planner(tiny_fp32):
    planned = memory.weight_bytes(TINY, "fp32")
    assert tiny_fp32.weight_bytes() == pytest.approx(planned, rel=0.05)


@pytest.mark.model
@pytest.mark.parametrize("precision", ["int8", "nf4"])
def test_bitsandbytes_on_cpu_shrinks_the_footprint_as_planned(cpu, tiny_fp32, precision):
    with hf.HFModel(provision.hf_dir(TINY), TINY, precision, cpu) as model:
        planned = memory.weight_bytes(TINY, precision, keep_bytes=4)
        assert model.weight_bytes() == pytest.approx(planned, rel=0.05)
        assert model.weight_bytes() < tiny_fp32.weight_bytes()
        reply = model.chat(MESSAGES, max_tokens=4)
        assert reply["usage"]["completion_tokens"] >= 1
        model.chat(MESSAGES, max_tokens=4)  # the same prompt again
        reused = model.timings().prompt_tokens < reply["usage"]["prompt_tokens"]
        # LLM.int8's outliers depend on the tokens of each pass: it recomputes every prompt
        assert reused == (precision != "int8")


@pytest.mark.model
def test_same_prompt_and_tokens_as_llama_cpp(tiny_fp32, tiny_chat):
    assert tiny_fp32.prompt_text(MESSAGES) == tiny_chat.prompt_text(MESSAGES)
    assert tiny_fp32.count_tokens(MESSAGES) == tiny_chat.count_tokens(MESSAGES)


@pytest.mark.model
def test_chat_returns_an_openai_style_completion(tiny_fp32):
    tiny_fp32.reset()  # nothing cached: timings count the whole prompt
    reply = tiny_fp32.chat(MESSAGES, max_tokens=8)
    choice = reply["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in {"stop", "length"}
    usage = reply["usage"]
    assert usage["prompt_tokens"] == tiny_fp32.count_tokens(MESSAGES)
    assert 1 <= usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    timings = tiny_fp32.timings()
    assert timings.prompt_tokens == usage["prompt_tokens"]
    assert timings.generated_tokens == usage["completion_tokens"] - 1  # first comes from prefill


@pytest.mark.model
def test_a_cached_prefix_is_not_processed_again_and_changes_nothing(tiny_fp32):
    """The last call's KV cache serves the next prompt's shared prefix, as llama.cpp's does:
    the same probabilities and answer as from scratch, with fewer prompt tokens processed."""
    other = [MESSAGES[0], {"role": "user", "content": "Name a river in Germany."}]
    words = {"yes": ["Yes"], "no": ["No"]}
    tiny_fp32.reset()
    fresh_probs = tiny_fp32.next_token_probs(MESSAGES, words)
    tiny_fp32.reset()
    fresh = tiny_fp32.chat(MESSAGES, max_tokens=8)
    assert tiny_fp32.timings().prompt_tokens == fresh["usage"]["prompt_tokens"]

    tiny_fp32.reset()
    tiny_fp32.chat(other, max_tokens=8)  # shares the system turn with MESSAGES
    assert tiny_fp32.next_token_probs(MESSAGES, words) == pytest.approx(fresh_probs, rel=1e-4)
    again = tiny_fp32.chat(MESSAGES, max_tokens=8)  # all but the last prompt token cached
    assert again["choices"][0]["message"] == fresh["choices"][0]["message"]
    assert again["usage"] == fresh["usage"]  # usage counts the whole prompt
    assert tiny_fp32.timings().prompt_tokens == 1


@pytest.mark.model
def test_streaming_gives_the_same_text_in_chunks(tiny_fp32):
    whole = tiny_fp32.chat(MESSAGES, max_tokens=8)["choices"][0]["message"]["content"]
    chunks = list(tiny_fp32.chat(MESSAGES, max_tokens=8, stream=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[-1]["choices"][0]["finish_reason"] in {"stop", "length"}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == whole


@pytest.mark.model
def test_prompt_longer_than_the_context_is_rejected(tiny_fp32):
    too_long = [{"role": "user", "content": "word " * 2 * tiny_fp32.n_ctx}]
    with pytest.raises(ValueError, match=f"n_ctx is {tiny_fp32.n_ctx}"):
        tiny_fp32.chat(too_long, max_tokens=4)


@pytest.mark.model
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp16", "int8", "nf4"])
def test_tiny_on_the_gpu(precision):
    hw = detect(check_token=False)
    with hf.HFModel(provision.hf_dir(TINY), TINY, precision, hw) as model:
        assert model.model.device.type == "cuda"
        planned = memory.weight_bytes(TINY, precision)
        assert model.weight_bytes() == pytest.approx(planned, rel=0.05)
        assert model.chat(MESSAGES, max_tokens=4)["usage"]["completion_tokens"] >= 1
