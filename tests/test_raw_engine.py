"""The library against llama-cpp-python called directly, as notebooks 04 and 05 show it.

The notebooks' "under the hood" cells promise that the library changes nothing a learner
would see: the same prompt text, the same greedy answer, and the engine's own context
error when a naive chat outgrows its window (which `Conversation` avoids).
"""

from __future__ import annotations

import jinja2
import pytest

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture(scope="module")
def raw_llm(tiny_chat):
    """llama_cpp.Llama on the same file and threads as the library's model, small context."""
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(tiny_chat.path),
        n_ctx=512,
        n_threads=tiny_chat.n_threads,
        n_threads_batch=tiny_chat.llm.n_threads_batch,
        verbose=False,
    )
    yield llm
    llm.close()


@pytest.mark.model
def test_library_renders_the_ggufs_template_as_jinja_does(tiny_chat, raw_llm):
    # rendered the way Hugging Face chat templates are meant to be (trim and lstrip blocks)
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(raw_llm.metadata["tokenizer.chat_template"])
    expected = template.render(messages=MESSAGES, add_generation_prompt=True)
    assert tiny_chat.prompt_text(MESSAGES) == expected


@pytest.mark.model
def test_library_chat_gives_the_raw_engines_greedy_answer(tiny_chat, raw_llm):
    raw = raw_llm.create_chat_completion(messages=MESSAGES, max_tokens=24, temperature=0.0)
    lib = tiny_chat.chat(MESSAGES, max_tokens=24, temperature=0.0)
    assert lib["choices"][0]["message"] == raw["choices"][0]["message"]
    assert lib["usage"] == raw["usage"]
    assert lib["model"] == tiny_chat.path.name, "a response must not carry the local path"


@pytest.mark.model
def test_a_prompt_longer_than_the_context_is_the_engines_own_error(raw_llm):
    history = MESSAGES + [{"role": "user", "content": "tell me more " * 200}]
    with pytest.raises(ValueError, match="exceed context window of 512"):
        raw_llm.create_chat_completion(messages=history, max_tokens=8)
