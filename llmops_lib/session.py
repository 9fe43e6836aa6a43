"""The object setup() returns: the profile, the hardware, and models by role."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from . import provision
from .catalog import ModelSpec
from .hardware import Hardware
from .profiles import Choice, Profile


@dataclass
class Session:
    """What a notebook works with after `session = llmops_lib.setup()`."""

    profile: Profile
    hardware: Hardware

    def choice(self, role: str) -> Choice:
        return self.profile.choice(role)

    def spec(self, role: str) -> ModelSpec:
        return self.choice(role).spec

    def gguf_path(self, role: str = "chat") -> Path:
        """Local GGUF file for a llama.cpp role (assembled or downloaded on first use)."""
        return provision.gguf_path(self.spec(role))

    def choice_on(self, role: str, backend: str, instead: str) -> Choice:
        """The role's choice, or a clear error when the profile runs it on another backend.

        Every loader asks here (llama.cpp, transformers, SetFit), so a role used with the
        wrong backend fails alike everywhere; `instead` ends the error: what to do instead.
        """
        choice = self.choice(role)
        if choice.backend != backend:
            raise ValueError(
                f"The {role!r} role of profile {self.profile.name!r} runs {choice.model} on "
                f"{choice.backend}, not {backend}; {instead}"
            )
        return choice

    def llamacpp_model(self, role: str, instead: str) -> tuple[Path, bool]:
        """The role's GGUF and whether the course must supply Gemma's turns for it.

        Every llama.cpp runner (in-process model, llama_cpp.server, llama-server) asks here,
        so the turn-format decision lives in one place.
        """
        choice = self.choice_on(role, "llamacpp", instead)
        return self.gguf_path(role), choice.spec.turn_format == "gemma"

    def chat_model(self, role: str = "chat", n_ctx: int = 2048, **kwargs: Any):
        """Load the role's GGUF with llama-cpp-python (see llamacpp.LlamaCppModel)."""
        from .llamacpp import GEMMA_STOP, GEMMA_TEMPLATE, LlamaCppModel

        path, gemma = self.llamacpp_model(role, f"use the {self.choice(role).backend} backend.")
        if gemma:
            kwargs.setdefault("chat_template", GEMMA_TEMPLATE)
            kwargs.setdefault("stop", GEMMA_STOP)
        return LlamaCppModel(path, n_ctx=n_ctx, **kwargs)

    def summary(self) -> pd.DataFrame:
        """Hardware facts and the model for each role, as one small table."""
        rows = [("profile", f"{self.profile.name}: {self.profile.description}")]
        rows += self.hardware.as_rows()
        rows += [
            (f"role: {role}", f"{c.spec.title} [{c.backend}, {c.precision}]")
            for role, c in self.profile.roles.items()
        ]
        return pd.DataFrame(rows, columns=["item", "value"]).set_index("item")
