"""A chat model and an endpoint in plain Python, for unit tests of the lessons' logic.

`FakeChat` meets `backend.ScoringModel` (and so `LocalModel` and `ChatBackend`) for real:
it counts tokens with its own tokenizer (one token per whitespace-separated word; the
turn markers of its template are words of their own), renders messages with a chat
template, refuses a prompt longer than its context like llama.cpp does, cuts a reply at
max_tokens, streams chunks shaped like llama-cpp-python's, reuses the cached prefix of
the previous prompt and times what it did with a real clock. Replies come from a script
or from a function of the messages (and come back as their words joined by single
spaces, as the tokenizer sees them); nothing about a caller is assumed, so a lesson that
sends the wrong messages, trims too little or miscounts still fails its test.

`FakeSchemaChat` is a FakeChat that also takes a `response_format` (structured output).
`FakeEndpoint` answers `timed_chat()` like `endpoint.Endpoint`, one request at a time
(one slot, like llama_cpp.server), with `endpoint.Reply` objects: enough for the load test.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from llmops_lib.core.backend import NO_TIMINGS, ROLES, Message, Timings, check_chat_args, chunk_text
from llmops_lib.engines.endpoint import EndpointError, Reply

BOS, END, GENERATION = "<s>", "<|end|>", "<|assistant|>"
_ids = itertools.count(1)


def echo(messages: list[Message]) -> str:
    """The default reply: the last user message, repeated back."""
    last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    return f"You said: {last}"


class FakeChat:
    """A deterministic in-process chat model (see the module's docstring).

    replies: texts given in turn (an error once used up), or a function of the messages;
        default: `echo`.
    token_probs: first-token probabilities for next_token_probs(), a dict {token: p} or a
        function of the messages returning one; tokens not named have probability 0.
    token_delay_s: seconds spent per generated token (real sleep, so timings stay real).
    """

    def __init__(
        self,
        replies: Iterable[str] | Callable[[list[Message]], str] = echo,
        n_ctx: int = 512,
        token_probs: dict[str, float] | Callable[[list[Message]], dict[str, float]] | None = None,
        token_delay_s: float = 0.0,
        weight_bytes: int = 1_000_000,
        name: str = "fake-chat",
    ) -> None:
        if n_ctx < 1:
            raise ValueError(f"n_ctx={n_ctx} is not a context size; use a positive number.")
        self._reply = replies if callable(replies) else self._script(list(replies))
        self._n_ctx = n_ctx
        self.token_probs = token_probs if token_probs is not None else {}
        self.token_delay_s = token_delay_s
        self._weight_bytes = weight_bytes
        self.name = name
        self.path = Path(f"{name}.gguf")
        self.load_s = 0.0
        self.calls: list[dict[str, Any]] = []  # every chat() call's arguments, in order
        self._cache: list[str] = []  # prompt + reply tokens of the last call
        self._timings = NO_TIMINGS
        self.closed = False

    @staticmethod
    def _script(replies: list[str]) -> Callable[[list[Message]], str]:
        def next_reply(messages: list[Message]) -> str:
            if not replies:
                raise AssertionError("FakeChat: the scripted replies are used up")
            return replies.pop(0)

        return next_reply

    # --- LocalModel -------------------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    def tokenize(self, text: str) -> list[str]:
        """One token per whitespace-separated word."""
        return text.split()

    def prompt_text(self, messages: list[Message]) -> str:
        """`<s>`, one `<|role|> content <|end|>` line per message, then `<|assistant|>`."""
        lines = [BOS]
        for m in messages:
            if m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise ValueError(f"FakeChat: not a chat message: {m!r}")
            lines.append(f"<|{m['role']}|> {m['content']} {END}")
        return "\n".join([*lines, GENERATION])

    def count_tokens(self, messages: list[Message]) -> int:
        return len(self.tokenize(self.prompt_text(messages)))

    @property
    def grammars(self) -> bool:
        """None here, as on transformers: a caller's parser is all that checks an answer."""
        return False

    def complete(
        self, prompt: str, max_tokens: int = 32, grammar: str | None = None
    ) -> tuple[str, str]:
        """The scripted reply to `prompt` (seen as one user message), cut at max_tokens;
        the call is recorded in `calls` with its prompt and grammar."""
        self._check_open()
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens={max_tokens!r}: needs a whole number >= 1.")
        self.calls.append({"prompt": prompt, "max_tokens": max_tokens, "grammar": grammar})
        words = self.tokenize(self._reply([{"role": "user", "content": prompt}]))
        self._timings = Timings(len(self.tokenize(prompt)), 0.0, min(len(words), max_tokens), 0.0)
        return " ".join(words[:max_tokens]), "length" if len(words) > max_tokens else "stop"

    def weight_bytes(self) -> int:
        return self._weight_bytes

    def gpu_share(self) -> float:
        return 0.0

    def reset(self) -> None:
        self._cache = []

    def timings(self) -> Timings:
        return self._timings

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> FakeChat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- ChatBackend ------------------------------------------------------------------

    def chat(
        self,
        messages: list[Message],
        max_tokens: int = 256,
        temperature: float = 0.0,
        stream: bool = False,
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """A completion shaped like llama-cpp-python's (chunks when streaming)."""
        check_chat_args(messages, max_tokens, temperature)  # as every engine does first
        self._check_open()
        self.calls.append(
            {
                "messages": [dict(m) for m in messages],
                "max_tokens": max_tokens,
                "temperature": temperature,
                "stream": stream,
            }
        )
        prompt = self.tokenize(self.prompt_text(messages))
        if len(prompt) > self.n_ctx:  # llama-cpp-python's own check and words
            raise ValueError(
                f"Requested tokens ({len(prompt)}) exceed context window of {self.n_ctx}"
            )
        start = time.perf_counter()
        reused = _common_prefix(self._cache, prompt)
        evaluated = max(len(prompt) - reused, 1)  # llama.cpp evaluates at least one token
        prefill_ms = 1000 * (time.perf_counter() - start)
        words = self.tokenize(self._reply(messages))
        room = min(max_tokens, self.n_ctx - len(prompt))
        finish = "length" if len(words) > room else "stop"
        words = words[:room]
        self._cache = prompt + words
        meta = {
            "id": f"chatcmpl-fake-{next(_ids)}",
            "created": int(time.time()),
            "model": self.name,
        }
        if stream:
            return self._chunks(meta, words, finish, evaluated, prefill_ms)
        decode_ms = self._decode(len(words))
        self._timings = Timings(evaluated, prefill_ms, len(words), decode_ms)
        text = " ".join(words)
        return {
            **meta,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": len(prompt),
                "completion_tokens": len(words),
                "total_tokens": len(prompt) + len(words),
            },
        }

    def _chunks(
        self,
        meta: dict[str, Any],
        words: list[str],
        finish: str,
        evaluated: int,
        prefill_ms: float,
    ) -> Iterator[dict[str, Any]]:
        def chunk(delta: dict[str, str], finish_reason: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return {**meta, "object": "chat.completion.chunk", "choices": [choice]}

        yield chunk({"role": "assistant"})
        decode_ms = 0.0
        for i, word in enumerate(words):
            decode_ms += self._decode(1)
            yield chunk({"content": word if i == 0 else " " + word})
        self._timings = Timings(evaluated, prefill_ms, len(words), decode_ms)
        yield chunk({}, finish)

    def _decode(self, tokens: int) -> float:
        """Spend token_delay_s per token; return the milliseconds it really took."""
        start = time.perf_counter()
        for _ in range(tokens):
            if self.token_delay_s:
                time.sleep(self.token_delay_s)
        return 1000 * (time.perf_counter() - start)

    # --- ScoringModel -----------------------------------------------------------------

    def next_token_probs(
        self, messages: list[Message], words: dict[str, list[str]]
    ) -> dict[str, float]:
        """Per group of `words`: the summed probability of its spellings' first tokens.

        Like the real engine, groups that share a first token are refused, and the prompt
        must fit the context.
        """
        self._check_open()
        tokens = self.count_tokens(messages)
        if tokens > self.n_ctx:
            raise ValueError(f"Requested tokens ({tokens}) exceed context window of {self.n_ctx}")
        table = self.token_probs(messages) if callable(self.token_probs) else self.token_probs
        if any(p < 0 for p in table.values()) or sum(table.values()) > 1 + 1e-9:
            raise ValueError(f"FakeChat: token_probs {table} is not a distribution")
        firsts = {
            name: {self.tokenize(s)[0] for s in group if s.strip()} for name, group in words.items()
        }
        names = list(firsts)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                if firsts[a] & firsts[b]:
                    raise ValueError(f"{a!r} and {b!r} start with the same token; reword them.")
        return {name: sum(table.get(t, 0.0) for t in group) for name, group in firsts.items()}

    def chat_starting(
        self, messages: list[Message], starts: list[str], max_tokens: int = 48
    ) -> dict[str, Any]:
        """A chat() reply that begins with the start whose first token (a key of token_probs
        it begins with) is likeliest (greedy, the first on ties), then the scripted reply,
        like a constrained engine; the starts are recorded in `calls`."""
        if not starts:
            raise ValueError("FakeChat: no starts to choose from")
        table = self.token_probs(messages) if callable(self.token_probs) else self.token_probs

        def likeliness(start: str) -> float:  # of the token (a key of the table) it begins with
            return max((p for token, p in table.items() if start.startswith(token)), default=0.0)

        start = max(starts, key=likeliness)
        reply = self._reply
        self._reply = lambda msgs: f"{start} {reply(msgs)}"
        try:
            response = self.chat(messages, max_tokens)
        finally:
            self._reply = reply
        self.calls[-1]["starts"] = list(starts)
        return response

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"{self.name} is closed")


class FakeSchemaChat(FakeChat):
    """A FakeChat that also takes `response_format`, as llama-cpp-python and the OpenAI-style
    endpoints do (the chat contract does not ask for it: transformers has no grammar).

    The format is recorded in `calls`, not obeyed: a fake has no grammar, so a test scripts
    what a constrained engine would answer.
    """

    def chat(
        self,
        messages: list[Message],
        max_tokens: int = 256,
        temperature: float = 0.0,
        stream: bool = False,
        response_format: dict[str, Any] | None = None,
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        reply = super().chat(messages, max_tokens, temperature, stream)
        self.calls[-1]["response_format"] = response_format
        return reply


def _common_prefix(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class FakeEndpoint:
    """An OpenAI-compatible server in this process: a FakeChat behind one slot.

    Requests wait for the slot as on llama_cpp.server; `fail(messages)` may name an error
    to raise for a request (a refused request). `requests` records every answered one.
    """

    def __init__(
        self,
        model: FakeChat | None = None,
        fail: Callable[[list[Message]], str | None] | None = None,
        base_url: str = "http://fake.invalid/v1",
    ) -> None:
        self.model = model or FakeChat()
        self.fail = fail
        self.base_url = base_url
        self.requests: list[list[Message]] = []
        self._slot = threading.Lock()

    def timed_chat(
        self,
        messages: list[Message],
        max_tokens: int = 64,
        temperature: float = 0.0,
        timeout_s: float | None = None,
    ) -> Reply:
        start = time.perf_counter()
        problem = self.fail(messages) if self.fail else None
        if problem:
            raise EndpointError(f"{self.base_url} refused the request: {problem}", self.base_url)
        with self._slot:
            first = None
            parts = []
            for chunk in self.model.chat(messages, max_tokens, temperature, stream=True):
                if text := chunk_text(chunk):
                    first = first or time.perf_counter()
                    parts.append(text)
            self.requests.append(messages)
            tokens = self.model.timings().generated_tokens
        end = time.perf_counter()
        return Reply(
            text="".join(parts),
            ttft_s=(first - start) if first else float("nan"),
            total_s=end - start,
            completion_tokens=tokens,
        )
