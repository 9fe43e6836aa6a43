"""The llama.cpp backend with the real tiny model (SmolLM2 135M Instruct Q4_1 from PyPI)."""

from __future__ import annotations

import math
from importlib.metadata import files

import pytest

from llmops_lib.core.backend import chunk_text
from llmops_lib.engines.llamacpp import LlamaCppModel
from llmops_lib.planning import provision
from llmops_lib.planning.gguf_header import GGUFError, check_gguf, weight_summary

MESSAGES = [
    {"role": "system", "content": "You are a pirate who explains things briefly."},
    {"role": "user", "content": "What is a large language model?"},
]


@pytest.mark.model
def test_the_ggufs_own_chatml_template_renders_each_turn(tiny_chat):
    prompt = tiny_chat.prompt_text(MESSAGES)
    assert prompt.startswith("<|im_start|>system\nYou are a pirate")
    assert "<|im_start|>user\nWhat is a large language model?<|im_end|>\n" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.model
def test_chat_returns_openai_style_response_and_engine_timings(tiny_chat):
    response = tiny_chat.chat(MESSAGES, max_tokens=24)
    assert response["object"] == "chat.completion"
    message = response["choices"][0]["message"]
    assert message["role"] == "assistant" and message["content"].strip()
    usage = response["usage"]
    assert usage["prompt_tokens"] == tiny_chat.count_tokens(MESSAGES)
    assert 0 < usage["completion_tokens"] <= 24
    timings = tiny_chat.timings()
    assert timings.generated_tokens > 0 and timings.generated_ms > 0
    assert math.isfinite(timings.generated_tps) and timings.generated_tps > 0
    assert timings.ms_per_token == pytest.approx(1000 / timings.generated_tps)


@pytest.mark.model
def test_streaming_gives_the_same_text_as_greedy_completion(tiny_chat):
    full = tiny_chat.chat(MESSAGES, max_tokens=24)["choices"][0]["message"]["content"]
    chunks = list(tiny_chat.chat(MESSAGES, max_tokens=24, stream=True))
    assert len(chunks) > 2
    assert "".join(chunk_text(c) for c in chunks) == full


def test_missing_gguf_names_the_path(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        LlamaCppModel(missing)


def test_corrupt_gguf_names_the_path(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"<html>not a model</html>")
    with pytest.raises(ValueError, match="broken.gguf.*not a GGUF"):
        check_gguf(bad)


@pytest.mark.model
def test_a_gguf_cut_inside_its_tensors_is_refused_before_loading(session, tmp_path):
    path = session.model_path("chat")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    with pytest.raises(GGUFError, match=r"cut\.gguf.*cut short: its tensors need"):
        LlamaCppModel(cut)


@pytest.mark.model
def test_a_packaged_gguf_damaged_past_its_header_is_caught_by_its_record(session, tmp_path):
    path = session.model_path("chat")
    packaged = session.spec("chat").offline
    (expected,) = [f.hash.value for f in files(packaged.package) if str(f) == packaged.path]
    assert provision.verify_sha256(path, expected, "reinstall") == path
    damaged = tmp_path / "damaged.gguf"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one weight byte: header and sizes stay valid
    damaged.write_bytes(bytes(data))
    weight_summary(damaged)  # the structure is intact: only a checksum can tell
    with pytest.raises(provision.ModelAccessError, match=r"damaged\.gguf is damaged.*reinstall"):
        provision.verify_sha256(damaged, expected, "reinstall")


@pytest.mark.model
def test_context_larger_than_trained_lists_the_valid_range(session):
    path = session.model_path("chat")
    with pytest.raises(ValueError, match=r"n_ctx=1000000 .*1\.\.8192"):
        LlamaCppModel(path, n_ctx=1_000_000)
    with pytest.raises(ValueError, match="n_ctx=0"):
        LlamaCppModel(path, n_ctx=0)
