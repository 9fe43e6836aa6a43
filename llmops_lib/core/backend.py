"""The one contract every chat engine of the course meets.

llama.cpp in-process (`llamacpp.LlamaCppModel`), transformers (`hf.HFModel`), a model on
llama-server (`served.ServedModel`) and any OpenAI-compatible HTTP server
(`endpoint.Endpoint`, chat only) all answer `chat()` with the same
OpenAI-style dicts and report what a call cost as `Timings`. Lessons (a conversation, the
classifier, the guard, the benchmark) are written against these Protocols, never against
one engine, so a lesson runs on any of them and a unit test can hand it a fake.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .errors import InputError

Message = dict[str, str]
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Timings:
    """What the last call cost: prefill (the prompt) and decode (the generated tokens).

    llama.cpp fills it from its own counters, transformers from generate()'s streamer,
    an HTTP endpoint from the server's usage and a stopwatch (time to first token).
    """

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


NO_TIMINGS = Timings(0, 0.0, 0, 0.0)


class ChatBackend(Protocol):
    """Anything that answers chat messages: in-process engines and HTTP endpoints."""

    def chat(
        self,
        messages: list[Message],
        max_tokens: int = 256,
        temperature: float = 0.0,
        stream: bool = False,
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """An OpenAI-style chat completion, or an iterator of its chunks when streaming."""
        ...

    def timings(self) -> Timings:
        """What the last chat() call cost."""
        ...

    def close(self) -> None:
        """Free the model (or connection) now, not at garbage collection."""
        ...


class LocalModel(ChatBackend, Protocol):
    """A chat model whose context, tokens and weights a lesson can ask about: in this
    process, or on a server that answers those questions (llama-server)."""

    path: Path  # the file or folder it was loaded from (a server's: as the server names it)
    load_s: float  # seconds the load took

    @property
    def n_ctx(self) -> int: ...

    @property
    def grammars(self) -> bool:
        """Whether complete() obeys a grammar (llama.cpp's GBNF). An engine without them
        ignores the grammar and answers unconstrained, so a caller reads the answer as
        strictly as ever: the grammar makes a bad answer impossible, never the parser idle."""
        ...

    def complete(
        self, prompt: str, max_tokens: int = 32, grammar: str | None = None
    ) -> tuple[str, str]:
        """A greedy completion of a finished prompt (no chat template applied, BOS added
        unless the prompt writes it): its text and finish reason ('stop' or 'length').

        The prompt's special tokens are parsed and its PLAIN-marked parts (core.plain_text)
        tokenized as text, so a judged message cannot write the prompt's control tokens.
        """
        ...

    def prompt_text(self, messages: list[Message]) -> str:
        """The exact prompt string the model's chat template builds from `messages`."""
        ...

    def count_tokens(self, messages: list[Message]) -> int:
        """Prompt tokens for `messages`, counted with the model's own tokenizer."""
        ...

    def weight_bytes(self) -> int:
        """Bytes of weights the model reads per generated token, as loaded."""
        ...

    def gpu_share(self) -> float:
        """Share of the weights on a GPU: 0 all on the CPU, 1 all on the GPU (which memory
        bus a generated token reads them from: the roofline of each row); NaN where the
        engine cannot tell (a server that does not report its offload)."""
        ...

    def reset(self) -> None:
        """Forget cached prompt tokens, so the next call processes its whole prompt."""
        ...


class ScoringModel(LocalModel, Protocol):
    """A local model that also exposes its next-token probabilities (the classifier's)."""

    def next_token_probs(
        self, messages: list[Message], words: dict[str, list[str]]
    ) -> dict[str, float]: ...

    def chat_starting(
        self, messages: list[Message], starts: list[str], max_tokens: int = 48
    ) -> dict[str, Any]:
        """A greedy chat completion forced to begin with one of `starts`, then free text
        (the engine's own constraint: a logits processor, a grammar)."""
        ...


def chunk_text(chunk: dict[str, Any]) -> str:
    """The text of one streamed chunk: chat chunks carry it in delta, completions in text."""
    choices = chunk.get("choices") or [{}]
    choice = choices[0]
    return (choice.get("delta") or {}).get("content") or choice.get("text") or ""


def reply_text(response: dict[str, Any]) -> str:
    """The answer text of one non-streamed chat completion."""
    return response["choices"][0]["message"]["content"] or ""


def check_chat_args(messages: object, max_tokens: object, temperature: object = 0.0) -> None:
    """Refuse what an engine would otherwise render as text or run to the end of the context.

    Every engine calls this first, so a malformed message fails alike everywhere, naming
    the message index and the field.
    """
    if not isinstance(messages, list) or not messages:
        raise InputError(
            f"messages must be a non-empty list of {{'role': ..., 'content': ...}} dicts, got "
            f"{type(messages).__name__}{'' if messages else ' (empty)'}."
        )
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InputError(f"messages[{i}] is a {type(message).__name__}, not a dict.")
        unknown = set(message) - {"role", "content"}
        if unknown:
            raise InputError(f"messages[{i}] has unknown fields {sorted(unknown)}.")
        if message.get("role") not in ROLES:
            raise InputError(
                f"messages[{i}]['role'] is {message.get('role')!r}; use one of {', '.join(ROLES)}."
            )
        if not isinstance(message.get("content"), str):
            raise InputError(
                f"messages[{i}]['content'] is {type(message.get('content')).__name__}, "
                "not text (str)."
            )
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise InputError(
            f"max_tokens={max_tokens!r}: use a whole number >= 1 (the most tokens to generate)."
        )
    real = isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
    if not real or not math.isfinite(temperature) or temperature < 0:
        raise InputError(f"temperature={temperature!r}: use 0 (greedy) or a finite number > 0.")
