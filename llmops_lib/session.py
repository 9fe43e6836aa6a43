"""The object setup() returns: the one door to the profile's model for each role.

A notebook never names a model file or an engine: it asks the session for a role
("chat", "classifier", "encoder", "guard") and gets the local path, a loaded model, a
server or an endpoint for it. The engines themselves take plain values (paths, sizes,
a chat template), so they can be used and tested without a session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .core.backend import LocalModel
from .core.errors import InputError, unknown
from .core.hardware import Hardware
from .planning import catalog, provision
from .planning.catalog import ModelSpec
from .planning.profiles import Choice, Profile

SERVER_ENGINES = ("llama_cpp.server", "llama-server")


@dataclass
class Session:
    """What a notebook works with after `session = llmops_lib.setup()`."""

    profile: Profile
    hardware: Hardware

    def choice(self, role: str) -> Choice:
        """Which model plays `role` in this profile, on which engine, in which precision."""
        return self.profile.choice(role)

    def spec(self, role: str) -> ModelSpec:
        """The catalog record of the model that plays `role`."""
        return self.choice(role).spec

    def model_path(self, role: str = "chat") -> Path:
        """The local file or folder of the role's model (assembled or downloaded once)."""
        choice = self.choice(role)
        return provision.local_path(choice.spec, choice.backend)

    def model(self, role: str = "chat", precision: str | None = None, **kwargs: Any) -> LocalModel:
        """Load the role's model on its engine: llama.cpp (a GGUF) or transformers.

        `precision` overrides the profile's (transformers only); other keyword arguments go
        to the engine (llamacpp.LlamaCppModel or hf.HFModel), e.g. n_ctx or n_threads.
        """
        choice = self.choice(role)
        return self.load(choice.model, choice.backend, precision or choice.precision, **kwargs)

    def load(
        self, model: str, backend: str, precision: str | None = None, **kwargs: Any
    ) -> LocalModel:
        """Load any catalog model on `backend` (what model() does for a role)."""
        spec = catalog.get(model)
        _check_options(backend, precision, kwargs)  # before a file is fetched or loaded
        if backend == "llamacpp":
            from .engines.llamacpp import LlamaCppModel
            from .planning.colab import ensure_llama_cpp

            ensure_llama_cpp(self.hardware)  # on Colab, the first llama.cpp use provisions it
            return LlamaCppModel(provision.gguf_path(spec), **kwargs)
        if backend == "transformers":
            from .engines.hf import HFModel

            return HFModel(spec, precision or "fp32", self.hardware, **kwargs)
        raise InputError(
            f"{spec.title} runs on {backend}, which is not a chat engine; for an encoder use "
            "session.model_path('encoder') with llmops_lib.engines.encoder.train()."
        )

    def _gguf_choice(self, role: str, why: str) -> Choice:
        choice = self.choice(role)
        if choice.backend != "llamacpp":
            raise InputError(
                f"The {role!r} role of profile {self.profile.name!r} runs {choice.model} on "
                f"{choice.backend}, but {why}"
            )
        return choice

    def server(self, engine: str = "llama_cpp.server", role: str = "chat", **kwargs: Any):
        """A local server (not started yet; use it in a `with` block) for the role's GGUF.

        engine "llama_cpp.server": llama-cpp-python's server, one request at a time;
        "llama-server": llama.cpp's own, with n_parallel slots (continuous batching).
        """
        from .engines.servers import LlamaServer, LocalServer
        from .planning.colab import ensure_llama_cpp

        kinds = {"llama_cpp.server": LocalServer, "llama-server": LlamaServer}
        if engine not in kinds:
            from .core.errors import unknown

            raise unknown(engine, "server engine", kinds)
        choice = self._gguf_choice(
            role,
            "a local llama.cpp server needs a GGUF model. Serve it with TGI or vLLM and set "
            "LLMOPS_ENDPOINT to its URL (e.g. http://host:8000/v1).",
        )
        ensure_llama_cpp(self.hardware)  # both servers run llama.cpp
        return kinds[engine](provision.gguf_path(choice.spec), **kwargs)

    @contextmanager
    def endpoint(self, role: str = "chat", n_ctx: int = 2048) -> Iterator[Any]:
        """LLMOPS_ENDPOINT if set, else a local llama_cpp.server with the role's model.

        Whatever was started is stopped when the block ends, also when it raises.
        """
        from .engines.endpoint import ENDPOINT_ENV, connect

        url = os.environ.get(ENDPOINT_ENV)
        if url:
            yield connect(url)
            return
        with self.server("llama_cpp.server", role=role, n_ctx=n_ctx) as local:
            yield connect(local.base_url, server=local)

    def summary(self) -> pd.DataFrame:
        """Hardware facts and the model for each role, as one small table."""
        rows = [("profile", f"{self.profile.name}: {self.profile.description}")]
        rows += self.hardware.as_rows()
        rows += [
            (f"role: {role}", f"{c.spec.title} [{c.backend}, {c.precision}]")
            for role, c in self.profile.roles.items()
        ]
        return pd.DataFrame(rows, columns=["item", "value"]).set_index("item")


def _check_options(backend: str, precision: str | None, options: dict[str, Any]) -> None:
    """Refuse a keyword the backend's engine cannot take, listing the ones it can.

    llama_cpp.Llama takes **kwargs and ignores any it does not know, so `n_ctxx=4096`
    would load silently with the default context. A GGUF has one precision, its own.
    """
    import inspect

    if backend == "llamacpp":
        from llama_cpp import Llama

        from .engines.llamacpp import LlamaCppModel

        engines, fixed = (LlamaCppModel, Llama), {"path", "model_path"}
        if precision not in (None, "gguf"):
            raise InputError(
                f"precision={precision!r}: a llama.cpp model runs in its GGUF's own "
                "quantization; pick another GGUF file (or a transformers role) instead."
            )
    elif backend == "transformers":
        from .engines.hf import HFModel

        engines, fixed = (HFModel,), {"spec", "precision", "hw"}
    else:
        return  # not a chat engine: load() says so
    valid = {
        name
        for engine in engines
        for name, p in inspect.signature(engine.__init__).parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in {"self", *fixed}
    }
    for name in options:
        if name not in valid:
            raise unknown(name, f"{backend} engine option", sorted(valid))
