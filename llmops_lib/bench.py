"""Benchmark a chat backend: load time, time to first token, prompt and decode speed, memory.

A single stopwatch run says little: the first call pays for page faults and caches, and
other programs steal the CPU now and then. So every figure here comes from several
repetitions after a warm-up, reported as median and interquartile range (IQR). Prompt
and decode speeds come from the backend's timings(): llama.cpp's own counters, so
Python's share of each call does not blur them (transformers has none; its backend
clocks generate()'s streamer). Time to first token is a stopwatch on the stream,
because that is what a user waits for.

Run `python -m llmops_lib.bench` to check that the library adds no overhead to
llama-cpp-python and to see decode speed as a fraction of the memory-bandwidth roofline.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pandas as pd
import psutil
from tqdm import tqdm

from . import memory, native, roofline
from .llamacpp import (
    LlamaCppModel,
    Timings,
    chunk_text,
    engine_timings,
    offload_unavailable,
    restart_timings,
)

TINY_MODEL = "gemma-3-270m"  # the model every machine has: the backend comparison uses it
# A prompt of ~180 tokens (a system prompt with background, then the question), so that
# prefill is long enough to measure, as in a real chat or retrieval prompt.
MESSAGES = [
    {
        "role": "system",
        "content": (
            "You are a patient science teacher. Answer in plain words, in three or four short "
            "sentences, for a curious twelve-year-old. Background for your answer: sunlight "
            "looks white but is a mix of all colours. On its way through the atmosphere it "
            "meets nitrogen and oxygen molecules, which are much smaller than the wavelength "
            "of light. Such small particles scatter short wavelengths far more strongly than "
            "long ones (Rayleigh scattering, proportional to one over the wavelength to the "
            "fourth power), so blue light is scattered across the whole sky roughly five times "
            "more than red. Violet is scattered even more, but sunlight contains less of it "
            "and our eyes are less sensitive to it. At sunrise and sunset the light crosses "
            "much more air, most of the blue is scattered away before it reaches us, and the "
            "sun and clouds look red and orange."
        ),
    },
    {"role": "user", "content": "Why is the sky blue?"},
]

# Per repetition; bench() returns one row per repetition with these columns.
RUN_COLUMNS = [
    "config",
    "rep",
    "load_s",
    "ttft_s",
    "prompt_tokens",
    "prompt_tps",
    "generated_tokens",
    "generated_tps",
    "ms_per_token",
    "peak_rss_mb",
    "rss_added_mb",
    "weight_bytes",
]
# Per configuration (summarize): medians, and IQRs of the figures that vary per repetition.
# With a GPU, both tables also have peak_gpu_mb (memory in use on GPU 0, all processes).
VARYING = ["ttft_s", "prompt_tps", "generated_tps", "ms_per_token"]
SUMMARY_COLUMNS = [
    "load_s",
    "prompt_tokens",
    "generated_tokens",
    *[c for name in VARYING for c in (name, f"{name}_iqr")],
    "peak_rss_mb",
    "rss_added_mb",
    "weight_bytes",
]


class ChatBackend(Protocol):
    """What bench() needs from a model: LlamaCppModel and the transformers backend."""

    def chat(
        self, messages: list[dict[str, str]], max_tokens: int, temperature: float, stream: bool
    ) -> Any: ...

    def timings(self) -> Timings: ...

    def close(self) -> None: ...


def _gpu_used_bytes() -> int | None:
    """Memory in use on GPU 0 by all processes (llama.cpp's CUDA buffers included)."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info(0)
    return total - free


class PeakMemory:
    """Sample resident memory (and GPU memory) in a background thread; keep the peak.

    Why sample: the kernel's ru_maxrss is the peak of the whole process, so after one
    large model it cannot tell anything about the next one.
    """

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.baseline_rss = self.peak_rss = self._process.memory_info().rss
        self.has_gpu = _gpu_used_bytes() is not None
        self.peak_gpu = 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self._process.memory_info().rss)
            if self.has_gpu:
                self.peak_gpu = max(self.peak_gpu, _gpu_used_bytes() or 0)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self._process.memory_info().rss)

    def as_dict(self) -> dict[str, float]:
        row = {
            "peak_rss_mb": self.peak_rss / 1e6,
            "rss_added_mb": (self.peak_rss - self.baseline_rss) / 1e6,
        }
        if self.has_gpu:
            row["peak_gpu_mb"] = self.peak_gpu / 1e6
        return row


def weight_bytes(model: ChatBackend) -> int:
    """Bytes of weights the model reads per generated token (its tensors, as loaded)."""
    from .hf import HFModel

    if isinstance(model, LlamaCppModel):
        return int(model.llm._model.size())
    if isinstance(model, HFModel):
        return int(model.footprint_bytes)
    raise TypeError(
        f"weight_bytes() does not know the backend {type(model).__name__}; "
        "use a LlamaCppModel or an hf.HFModel."
    )


def _start_fresh(model: ChatBackend) -> None:
    """Process the whole prompt on every repetition (see LlamaCppModel.reset).

    transformers keeps no cache between calls, so only llama.cpp needs it.
    """
    if isinstance(model, LlamaCppModel):
        model.reset()


def run_once(model: ChatBackend, messages: list[dict[str, str]], max_tokens: int) -> dict:
    """One greedy streamed completion: time to first token and the engine's counters."""
    _start_fresh(model)
    start = time.perf_counter()
    ttft = math.nan
    chunks: Iterator[dict[str, Any]] = model.chat(
        messages, max_tokens=max_tokens, temperature=0.0, stream=True
    )
    for chunk in chunks:
        if math.isnan(ttft) and chunk_text(chunk):
            ttft = time.perf_counter() - start
    t = model.timings()
    return {
        "ttft_s": ttft,
        "prompt_tokens": t.prompt_tokens,
        "prompt_tps": t.prompt_tps,
        "generated_tokens": t.generated_tokens,
        "generated_tps": t.generated_tps,
        "ms_per_token": t.ms_per_token,
    }


def bench(
    load: Callable[[], ChatBackend],
    config: str,
    messages: list[dict[str, str]] = MESSAGES,
    max_tokens: int = 32,
    reps: int = 3,
    warmup: int = 1,
) -> pd.DataFrame:
    """Load a model with `load()`, warm it up, time `reps` completions; one row per rep.

    Load time and peak memory are measured once per configuration (the load) and
    repeated on every row, so rows from several configurations can be concatenated.
    """
    if reps < 1 or warmup < 0 or max_tokens < 1:
        raise ValueError(
            f"reps={reps}, warmup={warmup}, max_tokens={max_tokens}: use reps >= 1, "
            "warmup >= 0 and max_tokens >= 1."
        )
    with PeakMemory() as peak:
        start = time.perf_counter()
        model = load()
        load_s = time.perf_counter() - start
        try:
            for _ in range(warmup):
                run_once(model, messages, max_tokens)
            runs = [run_once(model, messages, max_tokens) for _ in range(reps)]
            weights = weight_bytes(model)
        finally:
            model.close()
    fixed = {"config": config, "load_s": load_s, **peak.as_dict(), "weight_bytes": weights}
    rows = [{**fixed, "rep": i, **run} for i, run in enumerate(runs)]
    columns = RUN_COLUMNS + (["peak_gpu_mb"] if peak.has_gpu else [])
    return pd.DataFrame(rows, columns=columns)


def _iqr(values: pd.Series) -> float:
    return float(values.quantile(0.75) - values.quantile(0.25))


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: median of every figure, IQR of those that vary per rep."""
    grouped = runs.drop(columns="rep").groupby("config", sort=False)
    medians = grouped.median()
    for name in VARYING:
        medians[f"{name}_iqr"] = grouped[name].agg(_iqr)
    extra = ["peak_gpu_mb"] if "peak_gpu_mb" in runs else []
    return medians[SUMMARY_COLUMNS + extra]


def thread_sweep(session, threads: tuple[int, ...] = (1, 2), **bench_kw: Any) -> pd.DataFrame:
    """The chat model on llama.cpp at each thread count (CPU only: n_gpu_layers=0).

    Both thread counts are set: n_threads (decode) and n_threads_batch (prefill), which
    llama-cpp-python otherwise sets to all logical cores whatever n_threads says.
    """
    frames = [
        bench(
            lambda n=n: session.chat_model(n_threads=n, n_threads_batch=n, n_gpu_layers=0),
            f"{n} thread{'s' * (n > 1)}",
            **bench_kw,
        )
        for n in tqdm(threads, desc="thread sweep")
    ]
    return pd.concat(frames, ignore_index=True)


def backend_comparison(
    session, precisions: tuple[str, ...] = ("fp32", "int8", "nf4"), **bench_kw: Any
) -> pd.DataFrame:
    """The tiny Gemma 3 270M on llama.cpp (Q4_K_M GGUF) and on transformers in `precisions`.

    The same weights (transformers reads them converted from the same GGUF), the same
    prompt and the same greedy decoding, on each backend's default device. A precision
    this machine cannot run fails with hf.PrecisionError before loading.
    """
    from . import catalog, hf, provision
    from .llamacpp import GEMMA_STOP, GEMMA_TEMPLATE

    tiny = catalog.get(TINY_MODEL)
    frames = [
        bench(
            lambda: LlamaCppModel(
                provision.tiny_gguf(), chat_template=GEMMA_TEMPLATE, stop=GEMMA_STOP
            ),
            "llama.cpp Q4_K_M",
            **bench_kw,
        )
    ]
    for precision in tqdm(precisions, desc="transformers"):
        frames.append(
            bench(
                lambda p=precision: hf.load(tiny, p, session.hardware),
                f"transformers {precision}",
                **bench_kw,
            )
        )
    return pd.concat(frames, ignore_index=True)


def offload_plan(n_layers: int) -> dict[str, int]:
    """n_gpu_layers for none, half and all of the layers (-1: all, output layer included)."""
    if n_layers < 1:
        raise ValueError(f"n_layers={n_layers} is not a layer count; use 1 or more.")
    half = n_layers // 2
    return {"0 layers (CPU)": 0, f"{half} of {n_layers} layers": half, "all layers": -1}


def offload_sweep(session, **bench_kw: Any) -> pd.DataFrame:
    """The chat model with none, half and all of its layers on the GPU."""
    reason = offload_unavailable()
    if reason:
        raise RuntimeError(f"Cannot sweep n_gpu_layers: {reason}.")
    plan = offload_plan(session.spec("chat").n_layers)
    frames = [
        bench(lambda n=n: session.chat_model(n_gpu_layers=n), label, **bench_kw)
        for label, n in tqdm(plan.items(), desc="offload sweep")
    ]
    return pd.concat(frames, ignore_index=True)


def roofline_points(
    summary: pd.DataFrame, spec, bandwidth_gbs: float, kv_bytes_per_value: float = 2
) -> pd.DataFrame:
    """Per configuration: bytes read per generated token, the roofline and the fraction reached.

    Bytes per token = the weights + the KV cache at the mean context length of the decode
    (prompt + half the generated tokens), at llama.cpp's default 16-bit cache.
    """
    kv = [
        memory.kv_cache_bytes(spec, max(1, round(p + g / 2)), bytes_per_value=kv_bytes_per_value)
        for p, g in zip(summary["prompt_tokens"], summary["generated_tokens"], strict=True)
    ]
    per_token = [
        roofline.bytes_per_token(w, k) for w, k in zip(summary["weight_bytes"], kv, strict=True)
    ]
    points = pd.DataFrame(
        {
            "label": summary.index.astype(str),
            "weight_bytes": summary["weight_bytes"].to_numpy(),
            "kv_bytes": kv,
            "bytes_per_token": per_token,
            "generated_tps": summary["generated_tps"].to_numpy(),
        },
        index=summary.index,
    )
    points["roofline_tps"] = [roofline.roofline_tps(bandwidth_gbs, b) for b in per_token]
    points["roofline_fraction"] = points["generated_tps"] / points["roofline_tps"]
    return points


def plot_summary(summary: pd.DataFrame, metric: str = "generated_tps", ax=None):
    """Bars of one median figure per configuration, with its IQR as error bars."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    errors = summary[f"{metric}_iqr"] / 2 if f"{metric}_iqr" in summary else None
    ax.bar(summary.index.astype(str), summary[metric], yerr=errors, capsize=4)
    ax.set(ylabel=metric, title=f"{metric} (median, IQR)")
    ax.grid(True, axis="y", alpha=0.3)
    return ax


# --- the benchmark command: library vs. llama-cpp-python called directly ----------------


def library_vs_raw(
    session,
    n_threads: int | None = None,
    max_tokens: int = 64,
    rounds: int = 9,
    messages: list[dict[str, str]] = MESSAGES,
    n_ctx: int = 2048,
) -> dict[str, Any]:
    """Decode speed through LlamaCppModel.chat vs. llama_cpp.Llama.create_completion.

    Same file, n_ctx, threads, n_gpu_layers and seed; the same prompt tokens; greedy;
    the same max_tokens. Runs alternate (lib, raw, raw, lib, ...) so that a slow spell
    of the machine hits both sides; the ratio is the median of the per-round ratios.
    """
    import llama_cpp

    lib = session.chat_model(n_ctx=n_ctx, n_threads=n_threads)
    try:
        raw = llama_cpp.Llama(
            model_path=str(lib.path),
            n_ctx=n_ctx,
            n_threads=lib.n_threads,
            n_threads_batch=lib.llm.n_threads_batch,
            n_gpu_layers=lib.n_gpu_layers,
            seed=0,
            verbose=False,
        )
    except Exception:
        lib.close()
        raise
    prompt = raw.tokenize(lib.prompt_text(messages).encode("utf-8"), add_bos=False, special=True)

    def run_lib() -> tuple[Timings, float]:
        lib.reset()
        start = time.perf_counter()
        lib.chat(messages, max_tokens=max_tokens, temperature=0.0)
        return lib.timings(), time.perf_counter() - start

    def run_raw() -> tuple[Timings, float]:
        raw.reset()
        restart_timings(raw)
        start = time.perf_counter()
        raw.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, stop=lib.stop)
        return engine_timings(raw), time.perf_counter() - start

    rounds_done = []
    try:
        run_lib()  # warm-up, both sides
        run_raw()
        for i in tqdm(range(rounds), desc="library vs raw"):
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
        weights = weight_bytes(lib)
    finally:
        lib.close()
        raw.close()
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
        "library_raw_ratio_iqr": _iqr(pd.Series(ratios)),
        # best run against best run: the least disturbed of each side on a busy machine
        "library_raw_ratio_best": max(r[0].generated_tps for r in rounds_done)
        / max(r[2].generated_tps for r in rounds_done),
        # ... and by a stopwatch around the whole call (templating and sampling included)
        "library_raw_ratio_wall": statistics.median(
            raw_s / lib_s for _, lib_s, _, raw_s in rounds_done
        ),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """The benchmark command: print (and save) the JSON summary."""
    from . import results, setup

    parser = argparse.ArgumentParser(
        prog="python -m llmops_lib.bench",
        description="Decode speed through llmops_lib vs. llama-cpp-python directly, and the "
        "fraction of the memory-bandwidth roofline it reaches (profile: LLMOPS_PROFILE).",
    )
    parser.add_argument("--threads", type=int, default=None, help="default: physical cores")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=25, help="interleaved library/raw pairs")
    args = parser.parse_args(argv)

    session = setup(quiet=True)
    load_before = os.getloadavg()[0]
    summary = library_vs_raw(
        session, n_threads=args.threads, max_tokens=args.max_tokens, rounds=args.rounds
    )
    if summary["n_gpu_layers"] == 0:
        bandwidth = roofline.memory_bandwidth(threads=summary["n_threads"])
        row = pd.DataFrame([summary]).rename(columns={"library_tps": "generated_tps"})
        point = roofline_points(row, session.spec("chat"), bandwidth).iloc[0]
        summary.update(
            bandwidth_gbs=bandwidth,
            kv_bytes=float(point["kv_bytes"]),
            bytes_per_token=float(point["bytes_per_token"]),
            roofline_tps=float(point["roofline_tps"]),
            roofline_fraction=float(point["roofline_fraction"]),
        )
    else:  # the CPU's copy bandwidth says nothing about layers that run on the GPU
        summary.update(roofline_fraction=None, roofline_note="layers on the GPU: no CPU roofline")
    # llama.cpp's own benchmark on the same model, threads and lengths: the raw engine.
    raw = native.llama_bench(
        session.gguf_path("chat"),
        n_threads=summary["n_threads"],
        n_prompt=summary["prompt_tokens"],
        n_gen=args.max_tokens,
        n_depth=(0, summary["prompt_tokens"]),  # decode after the prompt, as the library does
        reps=3,
    )
    tg = native.phase_tps(raw)["generated"]
    summary.update(llama_bench_tg_tps=tg, library_llama_bench_ratio=summary["library_tps"] / tg)
    # Other programs' demand for the CPU (1-minute load average, before and after): a value
    # near or above the core count means the figures were taken on a busy machine.
    summary.update(load_average=[load_before, os.getloadavg()[0]], cpu_cores=os.cpu_count())
    text = json.dumps(summary, indent=2)
    print(text)
    print(f"saved to {results.save_text(text, 'bench', '.json')}")
    return summary


if __name__ == "__main__":
    main()
