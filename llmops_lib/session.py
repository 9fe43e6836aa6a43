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
from .core.errors import InputError
from .core.hardware import Hardware
from .engines import registry
from .planning import catalog
from .planning.catalog import ModelSpec
from .planning.profiles import Choice, Profile


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
        where = registry.engine(choice.backend).locate(choice.spec)
        if not isinstance(where, Path):
            raise InputError(
                f"The {role!r} role of profile {self.profile.name!r} runs on a server "
                f"({where}): it has no local file. Use session.model({role!r}) instead."
            )
        return where

    def model(self, role: str = "chat", precision: str | None = None, **kwargs: Any) -> LocalModel:
        """Load the role's model on its engine: llama.cpp (a GGUF), transformers, or the
        llama-server the `served` engine reaches at LLMOPS_ENDPOINT.

        `precision` overrides the profile's (transformers only); other keyword arguments are
        the engine's options (engines.registry), e.g. n_ctx or n_threads.
        """
        choice = self.choice(role)
        return self.load(choice.model, choice.backend, precision or choice.precision, **kwargs)

    def load(
        self, model: str, backend: str, precision: str | None = None, **kwargs: Any
    ) -> LocalModel:
        """Load any catalog model on `backend` (what model() does for a role)."""
        return registry.engine(backend).model(catalog.get(model), self.hardware, precision, kwargs)

    def train(self, role: str, texts: Any, labels: Any, **kwargs: Any) -> Any:
        """A classifier fine-tuned from the role's model on (texts, labels): SetFit for the
        encoder (keyword arguments as engines.encoder.train: iterations, seed, progress)."""
        choice = self.choice(role)
        return registry.engine(choice.backend).trained(choice.spec, texts, labels, **kwargs)

    def offload_unavailable(self) -> str | None:
        """Why llama.cpp cannot put layers on a GPU here (a CPU-only build of llama-cpp-python,
        no CUDA GPU), or None when n_gpu_layers can offload."""
        from .engines.llamacpp import offload_unavailable

        return offload_unavailable()

    def server(self, engine: str = "llama_cpp.server", role: str = "chat", **kwargs: Any):
        """A local server (not started yet; use it in a `with` block) for the role's GGUF.

        engine "llama_cpp.server": llama-cpp-python's server, one request at a time;
        "llama-server": llama.cpp's own, with n_parallel slots (continuous batching).
        """
        registry.check_server(engine)  # before the role's file is fetched
        choice = self.choice(role)
        if choice.backend == "served":
            raise InputError(
                f"The {role!r} role of profile {self.profile.name!r} already runs on the server "
                f"at LLMOPS_ENDPOINT: use session.model({role!r}), or session.endpoint() to chat."
            )
        if choice.backend != registry.GGUF_BACKEND:
            raise InputError(
                f"The {role!r} role of profile {self.profile.name!r} runs {choice.model} on "
                f"{choice.backend}, but a local llama.cpp server needs a GGUF model. Serve it "
                "with TGI or vLLM and set LLMOPS_ENDPOINT to its URL (e.g. http://host:8000/v1)."
            )
        return registry.server(engine, choice.spec, self.hardware, **kwargs)

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
