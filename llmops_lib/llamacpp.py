"""GGUF backend on llama-cpp-python: load with sensible defaults, chat, stream, time.

Timings come from llama.cpp's own performance counters (llama_perf_context), not
from a stopwatch around Python, so they show what the engine itself spent on the
prompt and on each generated token.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

# Gemma's turn format, written as a chat template because the tiny GGUF carries none.
# Gemma has no system role: like Google's own template, the system prompt is put in
# front of the first user turn. llama-cpp-python's built-in "gemma" format drops it.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set first = messages[0]['content'] + '\n\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set first = '' %}{% set turns = messages %}{% endif %}"
    "{% for m in turns %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n{{ (first if loop.first else '') + m['content'] | trim }}"
    "<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
GEMMA_STOP = "<end_of_turn>"


@dataclass(frozen=True)
class Timings:
    """llama.cpp's counters for the last call (prompt = prefill, eval = decode)."""

    prompt_tokens: int
    prompt_ms: float
    generated_tokens: int
    generated_ms: float

    @property
    def prompt_tps(self) -> float:
        return 1000 * self.prompt_tokens / self.prompt_ms if self.prompt_ms else float("nan")

    @property
    def generated_tps(self) -> float:
        return (
            1000 * self.generated_tokens / self.generated_ms if self.generated_ms else float("nan")
        )

    @property
    def ms_per_token(self) -> float:
        return self.generated_ms / self.generated_tokens if self.generated_tokens else float("nan")


def default_threads() -> int:
    """Physical cores: llama.cpp decoding is memory bound, hyper-threads do not help."""
    return psutil.cpu_count(logical=False) or psutil.cpu_count() or 1


def offload_unavailable() -> str | None:
    """Why layers cannot be offloaded to a GPU here, or None when they can."""
    import llama_cpp

    from .hardware import detect

    if not llama_cpp.llama_supports_gpu_offload():
        return (
            "this llama-cpp-python build has no GPU support (a CPU-only build); on a GPU "
            'machine install a CUDA build: CMAKE_ARGS="-DGGML_CUDA=on" pip install llama-cpp-python'
        )
    if not detect(check_token=False).has_gpu:
        return "llama-cpp-python can offload, but there is no CUDA GPU on this machine"
    return None


def gpu_offload_available() -> bool:
    """True when this llama-cpp-python build can offload to a GPU and a GPU is present."""
    return offload_unavailable() is None


def restart_timings(llm: Any) -> None:
    """Zero llama.cpp's own counters of a llama_cpp.Llama (before the call to be timed)."""
    import llama_cpp

    llama_cpp.llama_perf_context_reset(llm._ctx.ctx)


def engine_timings(llm: Any) -> Timings:
    """llama.cpp's own counters of a llama_cpp.Llama since restart_timings()."""
    import llama_cpp

    data = llama_cpp.llama_perf_context(llm._ctx.ctx)
    return Timings(
        prompt_tokens=data.n_p_eval,
        prompt_ms=data.t_p_eval_ms,
        generated_tokens=data.n_eval,
        generated_ms=data.t_eval_ms,
    )


def chunk_text(chunk: dict[str, Any]) -> str:
    """The text of one streamed chunk: chat chunks carry it in delta, completions in text."""
    choice = chunk["choices"][0]
    return choice.get("delta", {}).get("content") or choice.get("text") or ""


def check_gguf(path: str | Path) -> Path:
    """Fail early, naming the file, when it is missing or not a GGUF model."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"GGUF model file not found: {str(path)!r}. Pass the path of an existing .gguf "
            "file, or let the profile provide one with session.gguf_path('chat')."
        )
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise ValueError(
            f"{str(path)!r} is not a GGUF model (starts with {magic!r}, expected b'GGUF'). "
            "The file is corrupt or of another format; download or assemble it again."
        )
    return path


class LlamaCppModel:
    """A GGUF model loaded with llama-cpp-python, with chat, streaming and timings."""

    def __init__(
        self,
        path: str | Path,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_gpu_layers: int | None = None,
        chat_template: str | None = None,
        stop: str | None = None,
        seed: int = 0,
        verbose: bool = False,
        **llama_kwargs: Any,
    ) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.path = check_gguf(path)
        if n_ctx < 1:
            raise ValueError(f"n_ctx={n_ctx} is not a context size; use a positive number.")
        self.n_threads = n_threads or default_threads()
        if n_gpu_layers is None:
            n_gpu_layers = -1 if gpu_offload_available() else 0
        self.n_gpu_layers = n_gpu_layers
        start = time.perf_counter()
        self.llm = Llama(
            model_path=str(self.path),
            n_ctx=n_ctx,
            n_threads=self.n_threads,
            n_gpu_layers=n_gpu_layers,
            seed=seed,
            verbose=verbose,
            **llama_kwargs,
        )
        self.load_s = time.perf_counter() - start
        if n_ctx > self.llm._model.n_ctx_train():
            trained = self.llm._model.n_ctx_train()
            self.close()
            raise ValueError(
                f"n_ctx={n_ctx} is more than {self.path.name} was trained for; use 1..{trained}."
            )
        template = chat_template or self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            name = self.path.name
            self.close()
            raise ValueError(
                f"{name} carries no chat template; pass chat_template= (for Gemma base "
                "models: llmops_lib.llamacpp.GEMMA_TEMPLATE with stop=GEMMA_STOP)."
            )
        eos_id = self.llm.token_eos()
        self.stop = stop
        self.formatter = Jinja2ChatFormatter(
            template,
            eos_token=stop or self._token_text(eos_id),
            bos_token=self._token_text(self.llm.token_bos()),
            stop_token_ids=[eos_id],
        )
        self.llm.chat_handler = self.formatter.to_chat_handler()

    def _token_text(self, token_id: int) -> str:
        if token_id < 0:
            return ""
        return self.llm.detokenize([token_id], special=True).decode("utf-8", errors="replace")

    @property
    def n_ctx(self) -> int:
        return self.llm.n_ctx()

    def tokenize(self, text: str) -> list[int]:
        """Token ids as the model sees them (special tokens like <start_of_turn> parsed)."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        """The exact prompt string the chat handler builds from `messages`."""
        return self.formatter(messages=messages).prompt

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        """Prompt tokens for `messages`, counted with the model's own tokenizer."""
        return len(self.tokenize(self.prompt_text(messages)))

    def chat(
        self,
        messages: list[dict[str, str]],
        max_tokens: int = 256,
        temperature: float = 0.0,
        stream: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """OpenAI-style chat completion (a dict, or an iterator of chunks when streaming)."""
        restart_timings(self.llm)
        return self.llm.create_chat_completion(
            messages=messages,
            max_tokens=max_tokens,
            temperature=temperature,
            stream=stream,
            **kwargs,
        )

    def reset(self) -> None:
        """Forget the cached tokens, so the next chat() processes its whole prompt again.

        llama-cpp-python reuses the cached prefix of an identical prompt; a benchmark that
        repeats one prompt would otherwise time the prefill of a single token.
        """
        self.llm.reset()

    def timings(self) -> Timings:
        """llama.cpp's counters since the last chat() call started."""
        return engine_timings(self.llm)

    def close(self) -> None:
        """Free the model's memory now instead of at garbage collection."""
        self.llm.close()

    def __enter__(self) -> LlamaCppModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stream_text(chunks: Iterator[dict[str, Any]], echo: bool = True) -> str:
    """Print streamed chat chunks as they arrive (like the seed's printer); return the text."""
    parts = []
    for chunk in chunks:
        piece = chunk_text(chunk)
        if piece:
            parts.append(piece)
            if echo:
                print(piece, end="", flush=True)
    if echo:
        print()
    return "".join(parts)
