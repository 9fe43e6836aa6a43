"""The one table of engines: the backend names a profile may give a role, and the servers.

Each engine says where its model is (a local file or folder from one of provision's
finders, or for `served` the URL of a running server), which keyword
options its loader takes, and how it loads a model from that path. `Session`, `provision`'s
callers and the profile tests read this table, so a backend name is dispatched here and
nowhere else. An option an engine cannot take is refused by name (an `InputError` naming the
option and the engine) before any file is fetched, never a `TypeError` from `**kwargs` or,
worse, ignored: llama_cpp.Llama takes `**kwargs` and drops the ones it does not know, so
`n_ctxx=4096` would load silently with the default context.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.backend import LocalModel
from ..core.errors import InputError, unknown
from ..core.hardware import Hardware
from ..planning import provision
from ..planning.catalog import ModelSpec


def _keywords(*callables: Callable[..., Any], fixed: set[str]) -> frozenset[str]:
    """The keyword parameters of `callables`, less the ones the registry passes itself."""
    return frozenset(
        name
        for fn in callables
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in {"self", *fixed}
    )


@dataclass(frozen=True)
class Engine:
    """How a backend name turns a catalog model into local files and a loaded model.

    `load` is None for an engine the lessons train on rather than chat with (SetFit), which
    has `train` instead; `options` is read on first use (llama.cpp's own keywords need
    llama_cpp imported, which on Colab installs it).
    """

    name: str
    locate: Callable[[ModelSpec], Path | str]  # local files (fetched once), or a server's URL
    options: Callable[[], frozenset[str]]
    load: Callable[[Any, ModelSpec, Hardware, str | None, dict[str, Any]], LocalModel] | None
    check: Callable[[ModelSpec, Hardware, str | None, dict[str, Any]], None]
    hint: str = ""  # what to do instead, where `load` is None
    train: Callable[..., Any] | None = None  # (base path, texts, labels, **options) -> classifier
    train_options: Callable[[], frozenset[str]] = frozenset  # the keywords `train` takes

    def refuse_unknown(self, options: dict[str, Any], training: bool = False) -> None:
        """An InputError naming the first option the loader (or `train`) does not take."""
        valid, what = (self.train_options(), "training") if training else (self.options(), "engine")
        for name in options:
            if name not in valid:
                raise unknown(name, f"{self.name} {what} option", sorted(valid))

    def model(
        self, spec: ModelSpec, hw: Hardware, precision: str | None, options: dict[str, Any]
    ) -> LocalModel:
        """The model loaded, after its options and precision were checked (before any fetch)."""
        if self.load is None:
            raise InputError(
                f"{spec.title} runs on {self.name}, which is not a chat engine; {self.hint}"
            )
        self.refuse_unknown(options)
        self.check(spec, hw, precision, options)
        return self.load(self.locate(spec), spec, hw, precision, options)

    def trained(self, spec: ModelSpec, texts: Any, labels: Any, **options: Any) -> Any:
        """A classifier fine-tuned from `spec` on (texts, labels), for a trainable engine."""
        if self.train is None:
            raise InputError(f"{spec.title} runs on {self.name}, which trains no classifier.")
        self.refuse_unknown(options, training=True)
        return self.train(self.locate(spec), texts, labels, **options)


def _llamacpp_options() -> frozenset[str]:
    from llama_cpp import Llama

    from .llamacpp import LlamaCppModel

    return _keywords(LlamaCppModel.__init__, Llama.__init__, fixed={"path", "model_path"})


def _gguf_only(spec: ModelSpec, hw: Hardware, precision: str | None, options: dict) -> None:
    if precision not in (None, "gguf"):
        raise InputError(
            f"precision={precision!r}: a llama.cpp model runs in its GGUF's own "
            "quantization; pick another GGUF file (or a transformers role) instead."
        )


def _llamacpp_check(spec: ModelSpec, hw: Hardware, precision: str | None, options: dict) -> None:
    from ..planning.colab import ensure_llama_cpp

    _gguf_only(spec, hw, precision, options)
    ensure_llama_cpp(hw)  # on Colab, the first llama.cpp use provisions it


def _llamacpp_load(path: Path, spec: ModelSpec, hw: Hardware, precision, options) -> LocalModel:
    from .llamacpp import LlamaCppModel

    return LlamaCppModel(path, **options)


def _hf_options() -> frozenset[str]:
    from .hf import HFModel

    return _keywords(HFModel.__init__, fixed={"path", "spec", "precision", "hw"})


def _hf_check(spec: ModelSpec, hw: Hardware, precision: str | None, options: dict) -> None:
    from .hf import check_load

    check_load(spec, precision or "fp32", hw, options.get("n_ctx", 2048))  # before any download


def _hf_load(path: Path, spec: ModelSpec, hw: Hardware, precision, options) -> LocalModel:
    from .hf import HFModel

    return HFModel(path, spec, precision or "fp32", hw, **options)


def _no_check(spec: ModelSpec, hw: Hardware, precision: str | None, options: dict) -> None:
    return None


def _setfit_train(base: Path, texts: Any, labels: Any, **options: Any) -> Any:
    from .encoder import train

    return train(texts, labels, base, **options)


def _setfit_train_options() -> frozenset[str]:
    from .encoder import train

    return _keywords(train, fixed={"texts", "labels", "base"})


def _served_url(spec: ModelSpec) -> str:
    from .endpoint import ENDPOINT_ENV, EXAMPLE

    url = os.environ.get(ENDPOINT_ENV)
    if not url:
        raise InputError(
            f"{spec.title} is served: set {ENDPOINT_ENV} to the URL of a llama-server that "
            f"serves it, e.g. {EXAMPLE} (llama-server -m <its GGUF> --jinja --port 8000)."
        )
    return url


def _served_options() -> frozenset[str]:
    from .served import ServedModel

    return _keywords(ServedModel.__init__, fixed={"base_url", "spec"})


def _served_load(url: str, spec: ModelSpec, hw: Hardware, precision, options) -> LocalModel:
    from .served import ServedModel

    return ServedModel(url, spec, **options)


ENGINES = {
    "llamacpp": Engine(
        "llamacpp", lambda spec: provision.gguf_path(spec), _llamacpp_options, _llamacpp_load,
        _llamacpp_check,
    ),
    "transformers": Engine(
        "transformers", lambda spec: provision.hf_dir(spec), _hf_options, _hf_load, _hf_check
    ),
    # A GGUF on a running llama-server: the contract over HTTP (engines.served).
    "served": Engine("served", _served_url, _served_options, _served_load, _gguf_only),
    "setfit": Engine(
        "setfit", lambda spec: provision.encoder_path(spec), frozenset, None, _no_check,
        hint="fine-tune it with session.train('encoder', texts, labels).",
        train=_setfit_train, train_options=_setfit_train_options,
    ),
}  # fmt: skip


def engine(backend: str) -> Engine:
    """The engine a profile's backend name stands for."""
    if backend not in ENGINES:
        raise unknown(backend, "backend", ENGINES)
    return ENGINES[backend]


def _local_server(path: Path, **options: Any) -> Any:
    from .servers import LocalServer

    return LocalServer(path, **options)


def _llama_server(path: Path, **options: Any) -> Any:
    from .servers import LlamaServer

    return LlamaServer(path, **options)


# The local servers, each serving a GGUF of the llamacpp engine over the OpenAI API:
# llama-cpp-python's (one request at a time) and llama.cpp's own (n_parallel slots).
SERVERS: dict[str, Callable[..., Any]] = {
    "llama_cpp.server": _local_server,
    "llama-server": _llama_server,
}
GGUF_BACKEND = "llamacpp"


def check_server(kind: str) -> None:
    if kind not in SERVERS:
        raise unknown(kind, "server engine", SERVERS)


def server(kind: str, spec: ModelSpec, hw: Hardware, **options: Any) -> Any:
    """A local server of `kind` for the GGUF of `spec` (not started yet)."""
    from ..planning.colab import ensure_llama_cpp

    check_server(kind)
    ensure_llama_cpp(hw)  # both servers run llama.cpp, provisioned before the file is found
    return SERVERS[kind](ENGINES[GGUF_BACKEND].locate(spec), **options)
