"""The benchmark experiments of notebook 07, each a set of configurations run on bench().

Threads, GPU offload, llama.cpp against transformers on the same weights, and the library
against llama-cpp-python called directly (is the wrapper free?).
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pandas as pd

from ...core import hf_noise
from ...core.backend import Timings
from ...core.errors import InputError, whole
from ...core.progress import bar
from ...planning.provision import tiny_chat
from .bench import MESSAGES, bench, iqr


def thread_sweep(session, threads: tuple[int, ...] = (1, 2), **bench_kw: Any) -> pd.DataFrame:
    """The chat model on llama.cpp at each thread count (CPU only: n_gpu_layers=0).

    Both thread counts are set: n_threads (decode) and n_threads_batch (prefill), which
    llama-cpp-python otherwise sets to all logical cores whatever n_threads says.
    """
    frames = [
        bench(
            lambda n=n: session.model(n_threads=n, n_threads_batch=n, n_gpu_layers=0),
            f"{n} thread{'s' * (n > 1)}",
            **bench_kw,
        )
        for n in bar(threads, desc="thread sweep")
    ]
    return pd.concat(frames, ignore_index=True)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No per-tensor loading bars from transformers and no bitsandbytes warnings while the
    comparison runs: the fallback CPU kernel (no `kernels` package) and the int8 cast to
    fp16 are notebook 02's lesson, and here they would bury the table. Restored after."""
    with hf_noise.no_transformers_bars(), hf_noise.logger_level("bitsandbytes", logging.ERROR):
        yield


BACKEND_PRECISIONS = ("fp32", "int8", "nf4")  # transformers' side of backend_comparison


def backend_comparison(
    session, precisions: tuple[str, ...] = BACKEND_PRECISIONS, **bench_kw: Any
) -> pd.DataFrame:
    """The tiny chat model on llama.cpp (its GGUF) and on transformers in `precisions`.

    The same weights (transformers reads them converted from the same GGUF), the same
    prompt and the same greedy decoding, on each backend's default device. A precision
    this machine cannot run fails with hf.PrecisionError before loading.
    """
    tiny = tiny_chat().key
    frames = [bench(lambda: session.load(tiny, "llamacpp"), "llama.cpp GGUF", **bench_kw)]
    with _quiet_transformers():
        for precision in bar(precisions, desc="transformers"):
            frames.append(
                bench(
                    lambda p=precision: session.load(tiny, "transformers", p),
                    f"transformers {precision}",
                    **bench_kw,
                )
            )
    return pd.concat(frames, ignore_index=True)


def offload_plan(n_layers: int) -> dict[str, int]:
    """n_gpu_layers for none, half and all of the layers (-1: all, output layer included)."""
    if n_layers < 1:
        raise InputError(f"n_layers={n_layers} is not a layer count; use 1 or more.")
    half = n_layers // 2
    return {"0 layers (CPU)": 0, f"{half} of {n_layers} layers": half, "all layers": -1}


def offload_sweep(session, **bench_kw: Any) -> pd.DataFrame:
    """The chat model with none, half and all of its layers on the GPU."""
    reason = session.offload_unavailable()
    if reason:
        raise RuntimeError(f"Cannot sweep n_gpu_layers: {reason}.")
    plan = offload_plan(session.spec("chat").n_layers)
    frames = [
        bench(lambda n=n: session.model(n_gpu_layers=n), label, **bench_kw)
        for label, n in bar(list(plan.items()), desc="offload sweep")
    ]
    return pd.concat(frames, ignore_index=True)


def library_vs_raw(
    session,
    n_threads: int | None = None,
    max_tokens: int = 64,
    rounds: int = 9,
    messages: list[dict[str, str]] = MESSAGES,
    n_ctx: int = 2048,
) -> dict[str, Any]:
    """Decode speed through LlamaCppModel.chat vs. llama_cpp.Llama.create_completion.

    Both sides drive the same llama_cpp.Llama (the library model's own engine), so the
    weights are held once: an 8B model on a 16 GB T4 fits once, not twice, and the file,
    n_ctx, threads, n_gpu_layers and seed are the same by construction. The same prompt
    tokens; greedy; the same max_tokens. Runs alternate (lib, raw, raw, lib, ...) so that a
    slow spell of the machine hits both sides; the ratio is the median of the per-round ratios.
    """
    whole("rounds", rounds)  # before loading anything
    whole("max_tokens", max_tokens)
    lib = session.model(n_ctx=n_ctx, n_threads=n_threads)
    raw = lib.llm  # llama-cpp-python's Llama itself, called without the library

    def run_lib() -> tuple[Timings, float]:
        lib.reset()
        start = time.perf_counter()
        lib.chat(messages, max_tokens=max_tokens, temperature=0.0)
        return lib.timings(), time.perf_counter() - start

    def run_raw() -> tuple[Timings, float]:
        lib.reset()  # raw's cache and counters: the library model reads the same Llama's
        start = time.perf_counter()
        raw.create_completion(prompt, max_tokens=max_tokens, temperature=0.0)
        return lib.timings(), time.perf_counter() - start

    rounds_done = []
    try:
        text = lib.prompt_text(messages).encode("utf-8")
        prompt = raw.tokenize(text, add_bos=False, special=True)
        run_lib()  # warm-up, both sides
        run_raw()
        for i in bar(range(rounds), desc="library vs raw"):
            if i % 2:
                (t_raw, raw_s), (t_lib, lib_s) = run_raw(), run_lib()
            else:
                (t_lib, lib_s), (t_raw, raw_s) = run_lib(), run_raw()
            if (t_lib.prompt_tokens, t_lib.generated_tokens) != (
                t_raw.prompt_tokens,
                t_raw.generated_tokens,
            ):
                raise RuntimeError(
                    f"library and raw runs did different work ({t_lib} vs {t_raw}); they must "
                    "process the same prompt and generate the same tokens to be compared."
                )
            rounds_done.append((t_lib, lib_s, t_raw, raw_s))
        weights = lib.weight_bytes()
    finally:
        lib.close()
    ratios = [t_lib.generated_tps / t_raw.generated_tps for t_lib, _, t_raw, _ in rounds_done]
    return {
        "model": lib.path.name,
        "n_threads": lib.n_threads,
        "n_gpu_layers": lib.n_gpu_layers,
        "max_tokens": max_tokens,
        "rounds": rounds,
        "prompt_tokens": t_lib.prompt_tokens,
        "generated_tokens": t_lib.generated_tokens,
        "weight_bytes": weights,
        "library_tps": statistics.median(r[0].generated_tps for r in rounds_done),
        "raw_tps": statistics.median(r[2].generated_tps for r in rounds_done),
        # per round: library tokens/s / raw tokens/s, by the engine's counters ...
        "library_raw_ratio": statistics.median(ratios),
        "library_raw_ratio_iqr": iqr(pd.Series(ratios)),
        # best run against best run: the least disturbed of each side on a busy machine
        "library_raw_ratio_best": max(r[0].generated_tps for r in rounds_done)
        / max(r[2].generated_tps for r in rounds_done),
        # ... and by a stopwatch around the whole call (templating and sampling included)
        "library_raw_ratio_wall": statistics.median(
            raw_s / lib_s for _, lib_s, _, raw_s in rounds_done
        ),
    }
