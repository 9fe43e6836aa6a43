"""Benchmark a chat backend: load time, time to first token, prompt and decode speed, memory.

A single stopwatch run says little: the first call pays for page faults and caches, and
other programs steal the CPU now and then. So every figure here comes from several
repetitions after a warm-up, reported as median and interquartile range (IQR). Prompt
and decode speeds come from the backend's timings(): llama.cpp's own counters, so
Python's share of each call does not blur them (transformers has none; its backend
clocks generate()'s streamer). Time to first token is a stopwatch on the stream,
because that is what a user waits for.

`sweeps.py` runs the course's experiments on this harness; `python -m llmops_lib.commands.bench_cli`
checks from a terminal that the library adds no overhead to llama-cpp-python.
"""

from __future__ import annotations

import importlib.util
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
import psutil

from ...core import results
from ...core.backend import LocalModel, chunk_text
from ...core.errors import InputError, check_columns, whole

BENCH = results.Kind("bench-07", ".csv", "07", "decode speed vs roofline")  # 07's measured table

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
    "gpu_share",
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
    "gpu_share",
]


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


def run_once(model: LocalModel, messages: list[dict[str, str]], max_tokens: int) -> dict:
    """One greedy streamed completion: time to first token and the engine's counters."""
    model.reset()  # process the whole prompt on every repetition (see LlamaCppModel.reset)
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
    load: Callable[[], LocalModel],
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
    whole("reps", reps)
    whole("warmup", warmup, minimum=0)
    whole("max_tokens", max_tokens)
    if not callable(load):
        raise InputError(f"load is a {type(load).__name__}; pass a function that loads a model.")
    with PeakMemory() as peak:
        start = time.perf_counter()
        model = load()
        load_s = time.perf_counter() - start
        try:
            for _ in range(warmup):
                run_once(model, messages, max_tokens)
            runs = [run_once(model, messages, max_tokens) for _ in range(reps)]
            weights, on_gpu = model.weight_bytes(), model.gpu_share()
        finally:
            model.close()
    fixed = {"config": config, "load_s": load_s, **peak.as_dict()}
    fixed |= {"weight_bytes": weights, "gpu_share": on_gpu}
    rows = [{**fixed, "rep": i, **run} for i, run in enumerate(runs)]
    columns = RUN_COLUMNS + (["peak_gpu_mb"] if peak.has_gpu else [])
    return pd.DataFrame(rows, columns=columns)


def iqr(values: pd.Series) -> float:
    return float(values.quantile(0.75) - values.quantile(0.25))


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: median of every figure, IQR of those that vary per rep."""
    figures = [c for c in SUMMARY_COLUMNS if not c.endswith("_iqr")]
    check_columns("runs", runs, ["config", "rep", *figures])
    if runs.empty:
        raise InputError("runs has no rows: pass the table bench() returned.")
    grouped = runs.drop(columns="rep").groupby("config", sort=False)
    medians = grouped.median()
    for name in VARYING:
        medians[f"{name}_iqr"] = grouped[name].agg(iqr)
    extra = ["peak_gpu_mb"] if "peak_gpu_mb" in runs else []
    return medians[SUMMARY_COLUMNS + extra]


def plot_summary(summary: pd.DataFrame, metric: str = "generated_tps", ax=None):
    """Bars of one median figure per configuration, with its IQR as error bars."""
    import matplotlib.pyplot as plt

    if not isinstance(metric, str):
        raise InputError(f"metric={metric!r}: name a column of the summary, e.g. 'generated_tps'.")
    check_columns("summary", summary, [metric])
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    errors = summary[f"{metric}_iqr"] / 2 if f"{metric}_iqr" in summary else None
    ax.bar(summary.index.astype(str), summary[metric], yerr=errors, capsize=4)
    ax.set(ylabel=metric, title=f"{metric} (median, IQR)")
    ax.grid(True, axis="y", alpha=0.3)
    return ax
