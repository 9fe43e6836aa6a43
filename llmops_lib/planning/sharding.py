"""Sharding plan: how many GPUs a model needs under tensor parallelism, and what is left.

Tensor parallelism (TGI's --num-shard, vLLM's --tensor-parallel-size) splits every weight
matrix across the GPUs, so each GPU holds 1/shards of the weights and of the KV-cache
heads. Whatever memory a GPU has left after its share of the weights and overhead holds
KV cache, and that decides how many sequences the server can batch at once. The byte
counts come from `memory` (the planner of notebook 02); this module only divides them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from ..core.errors import InputError, non_empty
from . import catalog
from .catalog import ModelSpec
from .memory import GB, OVERHEAD_FRACTION, gpu_memory_gb, kv_cache_bytes, weight_bytes

# Tensor-parallel degrees within one node; engines need the attention heads to divide evenly.
TP_DEGREES = (1, 2, 4, 8)


@dataclass(frozen=True)
class ShardPlan:
    """One model, precision and GPU type: shards needed and the memory of each GPU (GB)."""

    model: str
    precision: str
    gpu: str
    gpu_gb: float
    shards: int
    context_tokens: int
    weights_gb: float  # whole model
    overhead_gb: float  # whole model: CUDA context, activations, allocator slack
    kv_per_sequence_gb: float  # one sequence of context_tokens, whole model
    kv_split: int  # GPUs the KV heads are split over (heads are replicated beyond n_kv_heads)

    @property
    def weights_per_gpu_gb(self) -> float:
        return self.weights_gb / self.shards

    @property
    def kv_free_per_gpu_gb(self) -> float:
        """Memory per GPU left for the KV cache after weights and overhead."""
        return self.gpu_gb - (self.weights_gb + self.overhead_gb) / self.shards

    @property
    def kv_per_sequence_per_gpu_gb(self) -> float:
        return self.kv_per_sequence_gb / self.kv_split

    @property
    def max_sequences(self) -> int:
        """Full-length sequences whose KV cache fits at once (the batch a server can run)."""
        return math.floor(self.kv_free_per_gpu_gb / self.kv_per_sequence_per_gpu_gb)

    def per_gpu(self) -> pd.DataFrame:
        """One row per GPU: its share of weights, overhead and KV cache, in GB."""
        rows = [
            {
                "gpu": f"{self.gpu} #{i}",
                "weights GB": self.weights_per_gpu_gb,
                "overhead GB": self.overhead_gb / self.shards,
                "KV free GB": self.kv_free_per_gpu_gb,
            }
            for i in range(self.shards)
        ]
        return pd.DataFrame(rows).set_index("gpu")

    def row(self) -> dict[str, object]:
        return {
            "model": self.model,
            "precision": self.precision,
            "gpu": self.gpu,
            "shards": self.shards,
            "weights GB": round(self.weights_gb, 1),
            "weights/GPU GB": round(self.weights_per_gpu_gb, 1),
            "KV free/GPU GB": round(self.kv_free_per_gpu_gb, 1),
            f"seqs of {self.context_tokens}": self.max_sequences,
        }


def tp_degrees(spec: ModelSpec) -> list[int]:
    """Tensor-parallel degrees the model's attention heads can be split into."""
    return [
        d
        for d in TP_DEGREES
        if spec.n_heads % d == 0 and (spec.n_kv_heads % d == 0 or d % spec.n_kv_heads == 0)
    ]


def shard_plan(
    spec: ModelSpec | str,
    precision: str,
    gpu: str | float,
    context_tokens: int = 8192,
) -> ShardPlan:
    """The fewest shards on which `spec` runs with room for one sequence of `context_tokens`."""
    spec = catalog.get(spec)
    gpu_gb = gpu_memory_gb(gpu)
    weights = weight_bytes(spec, precision) / GB
    kv_seq = kv_cache_bytes(spec, context_tokens) / GB
    gpu_name = gpu if isinstance(gpu, str) else f"{gpu:g} GB GPU"
    for shards in tp_degrees(spec):
        candidate = ShardPlan(
            model=spec.key,
            precision=precision,
            gpu=gpu_name,
            gpu_gb=gpu_gb,
            shards=shards,
            context_tokens=context_tokens,
            weights_gb=weights,
            overhead_gb=OVERHEAD_FRACTION * weights,
            kv_per_sequence_gb=kv_seq,
            kv_split=min(shards, spec.n_kv_heads),
        )
        if candidate.max_sequences >= 1:
            return candidate
    need = weights * (1 + OVERHEAD_FRACTION)
    raise InputError(
        f"{spec.title} in {precision} needs about {need:.0f} GB plus KV cache: more than "
        f"{max(tp_degrees(spec))} x {gpu_name} ({gpu_gb:g} GB each) in one node. Use a "
        "lower precision, a shorter context, or GPUs with more memory."
    )


def plan_table(
    models: Sequence[str] = ("mixtral-8x7b-instruct", "llama-3.1-70b-instruct"),
    precisions: Sequence[str] = ("bf16", "fp8", "nf4"),
    gpus: Sequence[str] = ("A100-80", "H100", "L4"),
    context_tokens: int = 8192,
) -> pd.DataFrame:
    """The plan for every model x precision x GPU, one row each."""
    rows = [
        shard_plan(model, precision, gpu, context_tokens).row()
        for model in non_empty("models", models)
        for precision in non_empty("precisions", precisions)
        for gpu in non_empty("gpus", gpus)
    ]
    return pd.DataFrame(rows).set_index(["model", "precision", "gpu"])
