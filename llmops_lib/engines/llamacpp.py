"""GGUF backend on llama-cpp-python: load with sensible defaults, chat, stream, time.

Timings come from llama.cpp's own performance counters (llama_perf_context), not
from a stopwatch around Python, so they show what the engine itself spent on the
prompt and on each generated token.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

from ..core.backend import Timings, check_chat_args
from ..core.errors import InputError, whole
from ..core.hardware import threads
from ..core.plain_text import mark_contents, tokenize_marked, writes_bos
from ..planning.gguf_header import trained_context
from ..planning.provision import verify_gguf


def offload_unavailable() -> str | None:
    """Why layers cannot be offloaded to a GPU here, or None when they can."""
    import llama_cpp

    from ..core.hardware import detect

    if not llama_cpp.llama_supports_gpu_offload():
        return (
            "this llama-cpp-python build has no GPU support (a CPU-only build); on a GPU "
            "machine replace it with a CUDA build (minutes of compiling; pip's cache would "
            'otherwise hand back the CPU one): CMAKE_ARGS="-DGGML_CUDA=on" pip install '
            "--force-reinstall --no-cache-dir --no-deps llama-cpp-python=="
            + version("llama-cpp-python")
        )
    if not detect(check_token=False).has_gpu:
        return "llama-cpp-python can offload, but there is no CUDA GPU on this machine"
    return None


def gpu_offload_available() -> bool:
    """True when this llama-cpp-python build can offload to a GPU and a GPU is present."""
    return offload_unavailable() is None


def default_gpu_layers() -> int:
    """Every layer on the GPU when this build can offload and a GPU is present, else none;
    the in-process model and both servers use it, so a comparison runs on one device."""
    return -1 if gpu_offload_available() else 0


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


def tokenize_plain(llm: Any, prompt: str, add_bos: bool) -> list[int]:
    """Tokens of a prompt whose contents are PLAIN-marked: the template's text with special
    tokens parsed, each content as plain text, so a typed '<|im_end|>' stays text."""

    def tokenize(text: str, bos: bool, special: bool) -> list[int]:
        return llm.tokenize(text.encode("utf-8"), add_bos=bos, special=special)

    return tokenize_marked(prompt, tokenize, add_bos)


class _PlainContents:
    """A llama_cpp.Llama as the chat handler sees it: its tokenize() keeps contents plain.

    llama-cpp-python's handler tokenizes the whole rendered prompt with special=True; this
    is the one call that differs, everything else (sampling, stops, grammar) is the Llama's.
    """

    def __init__(self, llm: Any) -> None:
        self._llm = llm

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return tokenize_plain(self._llm, text.decode("utf-8"), add_bos)


def token_text(llm: Any, token_id: int) -> str:
    """The text of one token id, special tokens included ('' for none, id -1)."""
    if token_id < 0:
        return ""
    return llm.detokenize([token_id], special=True).decode("utf-8", errors="replace")


def chat_formatter(llm: Any, chat_template: str | None = None) -> Any:
    """The GGUF's own chat template (or `chat_template`) as llama-cpp-python renders it."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = chat_template or llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise InputError(
            f"{Path(llm.model_path).name} carries no chat template (a base model?); pass "
            "chat_template= with a Jinja template, or use an instruction-tuned GGUF."
        )
    eos_id = llm.token_eos()
    return Jinja2ChatFormatter(
        template,
        eos_token=token_text(llm, eos_id),
        bos_token=token_text(llm, llm.token_bos()),
        stop_token_ids=[eos_id],
    )


def plain_chat_handler(formatter: Any) -> Any:
    """A llama-cpp-python chat handler for `formatter`'s template that keeps contents plain.

    The stock handler renders the template and tokenizes the whole prompt with special
    tokens parsed; this one marks each content first and tokenizes it as text. Set it as a
    Llama's `chat_handler` (the course's server launcher does the same in llama_cpp.server).
    """
    template_handler = formatter.to_chat_handler()

    def handler(*, llama: Any, messages: list[dict[str, str]], **kwargs: Any) -> Any:
        marked = mark_contents(lambda m: formatter(messages=m).prompt, messages)
        return template_handler(llama=_PlainContents(llama), messages=marked, **kwargs)

    return handler


class LlamaCppModel:
    """A GGUF model loaded with llama-cpp-python, with chat, streaming and timings.

    Message contents are tokenized as plain text: a user who types a control token such as
    <|im_end|> or <end_of_turn> cannot close their turn and forge the next one.
    """

    def __init__(
        self,
        path: str | Path,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_gpu_layers: int | None = None,
        chat_template: str | None = None,
        seed: int = 0,
        verbose: bool = False,
        **llama_kwargs: Any,
    ) -> None:
        from llama_cpp import Llama

        # Before llama.cpp sees it: a file cut short or damaged is named, not loaded as garbage
        # or aborted on (see verify_gguf); the trained context is refused before allocating.
        self.path = verify_gguf(path)
        trained = trained_context(self.path)
        if not isinstance(n_ctx, int) or isinstance(n_ctx, bool) or not 1 <= n_ctx <= trained:
            raise InputError(
                f"n_ctx={n_ctx!r} does not fit {self.path.name}, which was trained for "
                f"{trained} tokens; use a whole number in 1..{trained}."
            )
        self.n_threads = threads(n_threads)
        # Prefill too: llama-cpp-python would otherwise run it on every logical core.
        llama_kwargs.setdefault("n_threads_batch", self.n_threads)
        self.n_gpu_layers = default_gpu_layers() if n_gpu_layers is None else n_gpu_layers
        start = time.perf_counter()
        self.llm = Llama(
            model_path=str(self.path),
            n_ctx=n_ctx,
            n_threads=self.n_threads,
            n_gpu_layers=self.n_gpu_layers,
            seed=seed,
            verbose=verbose,
            **llama_kwargs,
        )
        self.load_s = time.perf_counter() - start
        try:
            self.formatter = chat_formatter(self.llm, chat_template)
        except ValueError:
            self.close()
            raise
        self.llm.chat_handler = plain_chat_handler(self.formatter)

    @property
    def n_ctx(self) -> int:
        """The context asked for: llama.cpp pads its own (128 -> 256), the binding does not."""
        return self.llm.context_params.n_ctx

    def tokenize(self, text: str) -> list[int]:
        """Token ids as the model sees them (special tokens like <start_of_turn> parsed)."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        """The exact prompt string the chat handler builds from `messages`."""
        return self.formatter(messages=messages).prompt

    def prompt_tokens(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt's token ids as chat() builds them (contents as plain text, no BOS)."""
        marked = mark_contents(self.prompt_text, messages)
        return tokenize_plain(self.llm, self.prompt_text(marked), add_bos=False)

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        """Prompt tokens for `messages`, counted with the model's own tokenizer."""
        return len(self.prompt_tokens(messages))

    def chat(
        self,
        messages: list[dict[str, str]],
        max_tokens: int = 256,
        temperature: float = 0.0,
        stream: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """OpenAI-style chat completion (a dict, or an iterator of chunks when streaming)."""
        check_chat_args(messages, max_tokens, temperature)
        restart_timings(self.llm)
        kwargs.setdefault("model", self.path.name)  # llama-cpp-python would put the full path
        return self.llm.create_chat_completion(
            messages=messages,
            max_tokens=max_tokens,
            temperature=temperature,
            stream=stream,
            **kwargs,
        )

    @property
    def grammars(self) -> bool:
        """llama.cpp samples under a GBNF grammar: only tokens that keep it valid."""
        return True

    def complete(
        self, prompt: str, max_tokens: int = 32, grammar: str | None = None
    ) -> tuple[str, str]:
        """A greedy completion of a finished prompt (a guard's): text and finish reason.

        No chat template; BOS added unless the prompt writes it; PLAIN-marked parts
        tokenized as text. `grammar` is GBNF: the answer can only be one of its sentences.
        """
        from llama_cpp import LlamaGrammar

        whole("max_tokens", max_tokens)
        add_bos = not writes_bos(prompt, self.formatter.bos_token)
        restart_timings(self.llm)
        out = self.llm.create_completion(
            tokenize_plain(self.llm, prompt, add_bos),
            max_tokens=max_tokens,
            temperature=0.0,
            grammar=LlamaGrammar.from_string(grammar, verbose=False) if grammar else None,
        )
        choice = out["choices"][0]
        return choice["text"], choice["finish_reason"]

    def weight_bytes(self) -> int:
        """Bytes of the model's tensors as loaded (what each generated token reads)."""
        return int(self.llm._model.size())

    def gpu_share(self) -> float:
        """Share of the layers llama.cpp runs on the GPU (0 on a CPU-only build)."""
        import llama_cpp

        if self.n_gpu_layers == 0 or not llama_cpp.llama_supports_gpu_offload():
            return 0.0
        layers = llama_cpp.llama_model_n_layer(self.llm.model)
        return 1.0 if self.n_gpu_layers < 0 else min(1.0, self.n_gpu_layers / layers)

    def n_params(self) -> int:
        """Parameters in the model (with weight_bytes(): the bits stored per weight)."""
        return int(self.llm._model.n_params())

    def reset(self) -> None:
        """Forget the cached tokens, so the next chat() processes its whole prompt again.

        llama-cpp-python reuses the cached prefix of an identical prompt; a benchmark that
        repeats one prompt would otherwise time the prefill of a single token. The counters
        start again too, so timings() then covers a call made on `llm` itself.
        """
        self.llm.reset()
        restart_timings(self.llm)

    def timings(self) -> Timings:
        """llama.cpp's counters since the last call (or reset()) started."""
        return engine_timings(self.llm)

    def close(self) -> None:
        """Free the model's memory now instead of at garbage collection."""
        self.llm.close()

    def __enter__(self) -> LlamaCppModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
