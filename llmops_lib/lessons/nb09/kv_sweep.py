"""Notebook 09's second experiment: one model with its KV cache in f16, q8_0 and q4_0.

For each cache type: the bytes per token the course's memory planner predicts and the ones
llama.cpp allocates (its load log), the decode speed with a long context already in the
cache (llama-bench), and what the type costs in quality: the KL divergence of the model's
next-token distribution with that cache from the same model's with an f16 cache, on the
same tokens (llama-perplexity --kl-divergence, the harness of the weight types). The model
file stays the same throughout, so the cache is the only difference.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ...core import datasets, results
from ...core.errors import InputError, non_empty
from ...planning import memory, profiles
from ...planning.catalog import ModelSpec
from ...planning.tools import missing, skipped
from ...programs import llama_bench, quantize

KV_CACHE = results.Kind("kv-cache-09", ".csv", "09", "KV-cache types: bytes, speed, quality")

REFERENCE = "f16"  # llama.cpp's default cache, the one the others are judged against
KV_TYPES = (REFERENCE, "q8_0", "q4_0")
EVAL_TEXT = datasets.TEXTS[0]  # the text notebook 09 scores the weight types on
COLUMNS = ["planned_bytes_per_token", "reported_bytes_per_token", "planned_vs_reported_pct"]
COLUMNS += ["kv_mib", "size_vs_f16", "decode_tps", "kld", "kld_99", "same_top_pct", "ppl"]


@dataclass(frozen=True)
class Settings:
    """How long a context is read and how long the decode test is: what differs by machine."""

    n_ctx: int  # tokens per chunk read; the second half of each is scored
    chunks: int  # chunks of the text scored
    bench_gen: int  # tokens llama-bench decodes after n_ctx tokens already in the cache
    bench_reps: int


# QUICK: the tiny profile in CI on 2 cores (one llama.cpp thread): one context of 512 tokens
# (255 scored), twice notebook 09's chunks, in about 27 s for all three types on an idle
# machine (1024 tokens took 62 s). FULL: two contexts of 4096, half the tiny model's trained
# 8192 (a Colab GPU).
QUICK = Settings(n_ctx=512, chunks=1, bench_gen=32, bench_reps=1)
FULL = Settings(n_ctx=4096, chunks=2, bench_gen=32, bench_reps=3)


def settings_for(profile: str) -> Settings:
    """QUICK on a quick profile (`tiny`: CI, a laptop), FULL on every other profile."""
    return QUICK if profiles.get(profile).quick else FULL


def measure(
    model_path: str | Path,
    spec: ModelSpec,
    settings: Settings,
    kv_types: tuple[str, ...] = KV_TYPES,
    n_threads: int | None = None,
) -> pd.DataFrame:
    """One row per cache type: planned and allocated bytes per token, the cache's size at
    n_ctx, decode tokens/s at depth n_ctx, and the KL divergence from the f16 cache.

    `spec` is the catalog record of the model in `model_path` (the planner's numbers).
    Without llama.cpp's tools it prints why and returns the rows with no figures (NaN).
    The f16 reference's log-probabilities go to a temporary file (about 100 kB per scored
    token for a 49k vocabulary), removed afterwards.
    """
    kv_types = non_empty("kv_types", kv_types)
    if REFERENCE not in kv_types:
        raise InputError(f"kv_types={kv_types!r}: needs {REFERENCE!r}, the reference.")
    for kv_type in kv_types:
        memory.kv_bytes_per_value(kv_type)
    index = pd.Index(kv_types, name="kv_type")
    reason = missing("llama-perplexity", "llama-bench")
    if reason is not None:
        return skipped(reason, index, COLUMNS)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="llmops-kv-") as tmp:
        logits = Path(tmp) / "f16-cache.logits"
        text = datasets.text_path(EVAL_TEXT)
        base = quantize.perplexity(
            model_path, text, settings.n_ctx, settings.chunks, logits, n_threads, kv_type=REFERENCE
        )
        same = {"kld": 0.0, "kld_99": 0.0, "same_top_pct": 100.0}
        for kv_type in kv_types:
            quality = (
                base | same
                if kv_type == REFERENCE
                else quantize.kl_divergence(model_path, logits, n_threads, kv_type=kv_type)
            )
            rows[kv_type] = _row(model_path, spec, settings, kv_type, quality, n_threads)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table["size_vs_f16"] = table["kv_mib"] / table.loc[REFERENCE, "kv_mib"]
    table = table[COLUMNS].set_axis(index)
    table.attrs["n_ctx"] = settings.n_ctx
    table.attrs["scored_tokens"] = base["chunks"] * quantize.scored_per_chunk(base["n_ctx"])
    return table


def _row(
    model_path: str | Path,
    spec: ModelSpec,
    settings: Settings,
    kv_type: str,
    quality: dict[str, float],
    n_threads: int | None,
) -> dict[str, float]:
    cells = int(quality["kv_cells"])
    planned = memory.kv_cache_bytes(spec, cells, kv_type=kv_type) / cells
    reported = quality["kv_mib"] * 2**20 / cells
    speed = llama_bench.llama_bench(
        model_path,
        n_threads,
        n_prompt=0,
        n_gen=settings.bench_gen,
        reps=settings.bench_reps,
        n_depth=(settings.n_ctx,),
        kv_type=kv_type,
    )
    return {
        "planned_bytes_per_token": planned,
        "reported_bytes_per_token": reported,
        "planned_vs_reported_pct": 100 * (planned / reported - 1),
        "kv_mib": quality["kv_mib"],
        "decode_tps": float(speed["tokens_per_s"].iloc[0]),
        "kld": quality["kld"],
        "kld_99": quality["kld_99"],
        "same_top_pct": quality["same_top_pct"],
        "ppl": quality["ppl"],
    }
