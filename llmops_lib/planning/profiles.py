"""Profiles: which model plays which role on which kind of machine.

A notebook never names a model; it asks the profile for a role ("chat",
"classifier", "encoder", "guard"), so the same notebook runs offline in CI with
the tiny models and on a Colab T4 with Llama 3.1 8B in 4-bit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..core.errors import lookup
from ..core.hardware import Hardware
from . import catalog

ROLES = ("chat", "classifier", "encoder", "guard")


@dataclass(frozen=True)
class Choice:
    """A model for one role, and how to run it."""

    model: str  # catalog key
    # a name in engines.registry.ENGINES: "llamacpp", "transformers", "setfit", "served"
    backend: str
    precision: str  # "gguf", "fp32", "fp16", "bf16", "int8" or "nf4"

    @property
    def spec(self) -> catalog.ModelSpec:
        return catalog.get(self.model)


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    roles: dict[str, Choice]
    offline: bool = False  # True: every file comes from a PyPI package, never the network
    # True: a run at CI scale (2 cores, minutes): lessons shrink their sweeps, and say so
    quick: bool = False

    def choice(self, role: str) -> Choice:
        """The model for `role`; an unknown role lists the valid ones."""
        return lookup(self.roles, role, "role")


_SMOLLM2_GGUF = Choice("smollm2-135m-instruct", "llamacpp", "gguf")
_SMOLLM2_SERVED = Choice("smollm2-135m-instruct", "served", "gguf")
_LLAMA3_GGUF = Choice("llama-3-8b-instruct-gguf", "llamacpp", "gguf")
_GUARD2_GGUF = Choice("llama-guard-2-8b-gguf", "llamacpp", "gguf")

_TINY = Profile(
    "tiny",
    "offline: SmolLM2 135M Instruct (GGUF from PyPI) + MiniLM encoder; no network, no GPU",
    {
        "chat": _SMOLLM2_GGUF,
        "classifier": Choice("smollm2-135m-instruct", "transformers", "fp32"),
        "encoder": Choice("all-minilm-l6-v2", "setfit", "fp32"),
        "guard": _SMOLLM2_GGUF,
    },
    offline=True,
    quick=True,
)

PROFILES: dict[str, Profile] = {
    p.name: p
    for p in [
        _TINY,
        # The tiny profile with chat and guard on a running llama-server: a backend a
        # profile names like any other (engines.served), checked in tests/test_engines.py.
        Profile(
            "served",
            "tiny, with chat and guard on the llama-server at LLMOPS_ENDPOINT serving SmolLM2 135M",
            _TINY.roles | {"chat": _SMOLLM2_SERVED, "guard": _SMOLLM2_SERVED},
            offline=True,
            quick=True,
        ),
        Profile(
            "colab-t4",
            "Colab T4 16 GB (no bf16): Llama 3.1 8B Instruct in 4-bit NF4, fp16 compute",
            {
                "chat": _LLAMA3_GGUF,
                "classifier": Choice("llama-3.1-8b-instruct", "transformers", "nf4"),
                "encoder": Choice("paraphrase-multilingual-minilm-l12-v2", "setfit", "fp32"),
                "guard": Choice("llama-guard-3-1b", "transformers", "fp16"),
            },
        ),
        Profile(
            "colab-l4",
            "Colab L4 24 GB / A100: Llama 3.1 8B Instruct in bf16",
            {
                "chat": _LLAMA3_GGUF,
                "classifier": Choice("llama-3.1-8b-instruct", "transformers", "bf16"),
                "encoder": Choice("bge-m3", "setfit", "fp32"),
                "guard": _GUARD2_GGUF,
            },
        ),
        Profile(
            "local-cpu",
            "laptop/server without GPU: Llama 3 8B Instruct Q6_K GGUF via llama.cpp",
            {
                "chat": _LLAMA3_GGUF,
                "classifier": Choice("qwen2.5-0.5b-instruct", "transformers", "fp32"),
                "encoder": Choice("paraphrase-multilingual-minilm-l12-v2", "setfit", "fp32"),
                "guard": _GUARD2_GGUF,
            },
        ),
        Profile(
            "multi-gpu",
            "several data-centre GPUs behind TGI/vLLM: Llama 3.1 70B, Mixtral 8x7B",
            {
                "chat": Choice("llama-3.1-70b-instruct", "transformers", "bf16"),
                "classifier": Choice("mixtral-8x7b-instruct", "transformers", "bf16"),
                "encoder": Choice("bge-m3", "setfit", "fp32"),
                "guard": Choice("llama-guard-3-8b", "transformers", "bf16"),
            },
        ),
    ]
}


def get(name: str) -> Profile:
    """The profile called `name`; an unknown name lists the valid ones."""
    hint = "Set it with setup(profile=...) or the LLMOPS_PROFILE environment variable."
    return lookup(PROFILES, name, "profile", hint)


def default_name(hw: Hardware) -> str:
    """The profile a notebook gets when nobody chose one.

    On Colab pick by GPU (T4 -> colab-t4, L4/A100 and bigger -> colab-l4); everywhere
    else `tiny`, because it works with no network, no token and no GPU.
    """
    if hw.runtime == "colab" and hw.gpu_name:
        return "colab-t4" if "T4" in hw.gpu_name or not hw.bf16 else "colab-l4"
    return "tiny"


def resolve(name: str | None, hw: Hardware) -> Profile:
    """Argument first, then LLMOPS_PROFILE, then the hardware default."""
    if name is None:
        name = os.environ.get("LLMOPS_PROFILE") or default_name(hw)
    return get(name)
