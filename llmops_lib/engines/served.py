"""A model on a running llama.cpp server (llama-server), met as a LocalModel over HTTP.

`Endpoint` only chats, which is all an OpenAI-compatible server promises. The lessons want
more of a model (its context, its tokenizer, its chat template, its weights, completions
under a grammar), and llama-server offers each of them beside the OpenAI API: /props (the
context, BOS, the file), /v1/models (parameters, bytes), /apply-template, /tokenize, and a
`grammar` field on /v1/completions. So a profile can name this engine ("served") for a
role, and `session.model(role)` hands the lessons a model on a server they cannot tell
from one in this process. A server without those endpoints (vLLM, Ollama) is refused
when it is loaded, naming the endpoint it lacks; `session.endpoint()` still chats with it.

Two things a server keeps to itself: how many layers it offloaded (`gpu_share()` is NaN,
unknown), and message contents in chat(): the server tokenizes them with special tokens
parsed, so a typed <|im_end|> closes a turn there (complete() keeps PLAIN-marked parts
plain, as the in-process engines do, because it sends token ids).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from ..core.backend import Message, Timings, check_chat_args
from ..core.errors import EndpointError, InputError, whole
from ..core.plain_text import tokenize_marked, writes_bos
from ..planning.catalog import ModelSpec
from .endpoint import ENDPOINT_ENV, Endpoint

LLAMA_SERVER = "llama.cpp's llama-server"


class ServedModel:
    """The model a llama-server at `base_url` serves, checked against the catalog's `spec`."""

    def __init__(
        self,
        base_url: str,
        spec: ModelSpec,
        n_ctx: int | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        start = time.perf_counter()
        self.endpoint = Endpoint(base_url, timeout_s=timeout_s)
        self.root = self.endpoint.base_url.removesuffix("/v1")
        self._http = httpx.Client(base_url=self.root, timeout=timeout_s)
        try:
            self.endpoint.check()
            self._props = self._json("GET", "/props")
            self._meta = self._served_meta(spec)
            if n_ctx is not None and whole("n_ctx", n_ctx) > self.n_ctx:
                raise InputError(
                    f"n_ctx={n_ctx}: the server at {self.root} holds {self.n_ctx} tokens per "
                    "sequence. Restart it with a larger context (llama-server -c), or ask less."
                )
        except BaseException:
            self.close()
            raise
        self.path = Path(self._props.get("model_path") or self.endpoint.model)
        self._fresh = False  # True after reset(): the next request skips the server's cache
        self.load_s = time.perf_counter() - start

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One request to an endpoint of llama-server beside the OpenAI API, decoded."""
        url = self.root + path
        try:
            response = self._http.request(method, path, json=body)
        except httpx.HTTPError as err:
            raise EndpointError(f"{url}: {type(err).__name__}: {err}", url) from None
        if response.status_code == 404:
            raise EndpointError(
                f"{url} does not exist: the 'served' engine needs {LLAMA_SERVER} (its "
                "/props, /tokenize and /apply-template). For another OpenAI-compatible server "
                "(vLLM, Ollama) use session.endpoint(), which only chats.",
                url,
                status=404,
            )
        if response.is_error:
            raise EndpointError(
                f"{url} refused the request: HTTP {response.status_code}: {response.text[:200]}",
                url,
                status=response.status_code,
            )
        return response.json()

    def _served_meta(self, spec: ModelSpec) -> dict[str, Any]:
        """The served model's own figures, refused when they are not the profile's model."""
        models = self._json("GET", "/v1/models").get("data") or [{}]
        meta = models[0].get("meta") or {}
        served = (meta.get("n_vocab"), meta.get("n_embd"))
        if served != (spec.vocab_size, spec.hidden_size):
            raise InputError(
                f"The server at {self.root} serves {self.endpoint.model} (vocabulary "
                f"{served[0]}, width {served[1]}), not the profile's {spec.title} (vocabulary "
                f"{spec.vocab_size}, width {spec.hidden_size}). Start it with that model, or "
                f"point {ENDPOINT_ENV} at the server that has it."
            )
        return meta

    @property
    def n_ctx(self) -> int:
        """The context of one sequence (the server splits its -c over its slots)."""
        return int(self._props["default_generation_settings"]["n_ctx"])

    @property
    def grammars(self) -> bool:
        """llama-server samples under a GBNF grammar given in the request."""
        return True

    def _tokenize(self, text: str, add_bos: bool, special: bool) -> list[int]:
        body = {"content": text, "add_special": add_bos, "parse_special": special}
        return self._json("POST", "/tokenize", body)["tokens"]

    def _extra(self) -> dict[str, Any]:
        """Fields of the next request: after reset(), the server's prompt cache is skipped."""
        fresh, self._fresh = self._fresh, False
        return {"cache_prompt": False} if fresh else {}

    def prompt_text(self, messages: list[Message]) -> str:
        """The prompt the server's chat template builds from `messages` (/apply-template)."""
        check_chat_args(messages, 1)
        return self._json("POST", "/apply-template", {"messages": messages})["prompt"]

    def count_tokens(self, messages: list[Message]) -> int:
        """The prompt tokens chat() sends the model: the template's prompt, tokenized by the
        server as its chat endpoint tokenizes it."""
        return len(self._tokenize(self.prompt_text(messages), False, True))

    def chat(
        self,
        messages: list[Message],
        max_tokens: int = 256,
        temperature: float = 0.0,
        stream: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """The server's own chat completion (/v1/chat/completions)."""
        extra = self._extra()
        return self.endpoint.chat(
            messages, max_tokens, temperature, stream, extra_body=extra or None, **kwargs
        )

    def complete(
        self, prompt: str, max_tokens: int = 32, grammar: str | None = None
    ) -> tuple[str, str]:
        """A greedy completion of a finished prompt, sent as token ids so PLAIN-marked parts
        stay text; BOS added unless the prompt writes it; `grammar` is GBNF."""
        whole("max_tokens", max_tokens)
        add_bos = not writes_bos(prompt, self._props.get("bos_token"))
        body = {"grammar": grammar} if grammar else {}
        tokens = tokenize_marked(prompt, self._tokenize, add_bos)
        out = self.endpoint.complete(tokens, max_tokens, body | self._extra())
        choice = out["choices"][0]
        return choice["text"], choice["finish_reason"]

    def weight_bytes(self) -> int:
        """Bytes of the served model's tensors, as the server reports them."""
        return int(self._meta["size"])

    def n_params(self) -> int:
        return int(self._meta["n_params"])

    def gpu_share(self) -> float:
        """Unknown (NaN): llama-server does not say how many layers it offloaded."""
        return math.nan

    def reset(self) -> None:
        """The next request processes its whole prompt (the server's prompt cache skipped)."""
        self._fresh = True

    def timings(self) -> Timings:
        """The server's own counters for the last call (llama-server reports them)."""
        return self.endpoint.timings()

    def close(self) -> None:
        """Close the connections; the server stays up (whoever started it stops it)."""
        self._http.close()
        self.endpoint.close()

    def __enter__(self) -> ServedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
