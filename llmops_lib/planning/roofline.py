"""The memory-bandwidth roofline of decoding: tokens/s <= bandwidth / bytes read per token.

Generating one token multiplies one activation vector by every weight matrix, so
every weight byte crosses the memory bus once per token (plus the KV cache of the
context so far), while the arithmetic per byte is tiny. The memory bus, not the
ALUs, sets the speed limit; this module measures the bus and does that division.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files

import numpy as np
import pandas as pd

from ..core.errors import InputError, positive, whole
from .catalog import ModelSpec
from .memory import kv_cache_bytes

# The slides' reference table (ms per generated token, LLaMA 7B/13B, llama.cpp, 2023).
PUBLISHED_SOURCE = (
    "Slides 'Local LLM Inference' (F. Mehri, Machine Learning Lab, Sharif University of "
    "Technology, 6 Feb 2024), slide 'Quantization Results'; the figures come from "
    "llama.cpp's k-quants work (https://github.com/ggml-org/llama.cpp/pull/1684, 2023)."
)


def memory_bandwidth(size_mb: int = 256, repeats: int = 5, threads: int = 1) -> float:
    """Copy bandwidth in GB/s: best of `repeats` copies of a `size_mb` array, read + write.

    The array must be far larger than the CPU caches, or the cache is measured instead
    of RAM. One core often cannot saturate the memory bus, so `threads` copies
    disjoint slices in parallel (numpy releases the GIL while copying). The best run
    is kept: other programs only ever make a copy slower, never faster.
    """
    size = int(positive("size_mb", size_mb) * 1e6)
    whole("repeats", repeats)
    whole("threads", threads)
    src = np.ones(size, dtype=np.uint8)
    dst = np.empty_like(src)
    bounds = np.linspace(0, size, threads + 1, dtype=np.int64)
    slices = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def copy(part: slice) -> None:
        np.copyto(dst[part], src[part])

    seconds = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(copy, slices))  # the first pass faults the pages in: not timed
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(copy, slices))
            seconds.append(time.perf_counter() - start)
    return 2 * size / min(seconds) / 1e9


GPU_COPY_MB = 1024  # the GPU copy's array: it holds two of them (source and destination)


def gpu_memory_bandwidth(size_mb: int = GPU_COPY_MB, repeats: int = 5) -> float | None:
    """The GPU's own copy bandwidth in GB/s (read + write, best of `repeats`), or None
    without a CUDA GPU. A model on the GPU reads its weights from GPU memory, so its
    roofline is this bus, not the CPU's (data sheets: T4 320 GB/s, L4 300 GB/s)."""
    import torch

    size = int(positive("size_mb", size_mb) * 1e6)
    whole("repeats", repeats)
    if not torch.cuda.is_available():
        return None
    src = torch.ones(size, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)  # the first copy warms up the allocator and the kernel: not timed
    seconds = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        seconds.append(start.elapsed_time(end) / 1000)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * size / min(seconds) / 1e9


def bytes_per_token(weight_bytes: float, kv_bytes: float = 0.0) -> float:
    """Bytes a decoder reads to produce one token: all weights plus the KV cache read."""
    kv = 0.0 if kv_bytes == 0 else positive("kv_bytes", kv_bytes)
    return positive("weight_bytes", weight_bytes) + kv


def roofline_tps(bandwidth_gbs: float, bytes_per_tok: float) -> float:
    """The highest decode speed (tokens/s) the memory bus allows."""
    return positive("bandwidth_gbs", bandwidth_gbs) * 1e9 / positive("bytes", bytes_per_tok)


def roofline_fraction(tokens_per_s: float, bandwidth_gbs: float, bytes_per_tok: float) -> float:
    """Measured decode speed as a fraction of the roofline (1.0 = the bus is saturated)."""
    return positive("tokens_per_s", tokens_per_s) / roofline_tps(bandwidth_gbs, bytes_per_tok)


def published_ms_per_token() -> pd.DataFrame:
    """The slides' table: ms per token for LLaMA 7B/13B by quantization and machine."""
    with files("llmops_lib.data").joinpath("slides_ms_per_token.csv").open() as fh:
        return pd.read_csv(fh, index_col=["model", "setting"])


def published_streamed_gbs() -> pd.DataFrame:
    """GB/s of weights each published run streamed: file size / seconds per token.

    The same division as the roofline, backwards: how much of its memory bus each machine
    actually used while decoding.
    """
    table = published_ms_per_token()
    rows = []
    for _, part in table.groupby(level="model", sort=False):
        size_gb = part.xs("file size GB", level="setting")
        timed = part.drop(index="file size GB", level="setting")
        rows.append(size_gb.to_numpy() / (timed / 1000))
    return pd.concat(rows).round(1)


# The data sheets' memory bandwidth of the machines in the slides' table, GB/s (Apple's M2
# Max announcement; NVIDIA's RTX 4080 page). The Ryzen's memory is not named: no figure.
DATA_SHEET_GBS = {"M2 Max": 400.0, "RTX 4080": 717.0}


def published_reading(model: str = "7B") -> pd.DataFrame:
    """The slides' streamed GB/s of one model read three ways, one row per machine setting.

    `GB/s low`/`GB/s high`: the range across the quantization types (a purely memory-bound
    decoder would stream the same GB/s whatever the type); `RTX 4080 x low`/`x high`: the
    GPU's GB/s over this row's, type by type, lowest and highest; `data sheet share`: the
    highest GB/s as a share of the machine's data-sheet bandwidth (NaN where none is known).
    """
    gbs = published_streamed_gbs()
    if model not in gbs.index.get_level_values("model"):
        models = sorted(set(gbs.index.get_level_values("model")))
        raise InputError(f"model={model!r}: the slides' table has {models}.")
    rows = gbs.xs(model, level="model")
    gpu = rows.loc[next(s for s in rows.index if s.startswith("RTX 4080"))]
    times = rows.rdiv(gpu, axis=1)  # the GPU's GB/s over each row's, per type
    sheet = [DATA_SHEET_GBS.get(setting.split(",")[0], float("nan")) for setting in rows.index]
    return pd.DataFrame(
        {
            "GB/s low": rows.min(axis=1),
            "GB/s high": rows.max(axis=1),
            "RTX 4080 x low": times.min(axis=1),
            "RTX 4080 x high": times.max(axis=1),
            "data sheet share": rows.max(axis=1) / sheet,
        }
    )


def plot_roofline(
    bandwidths: dict[str, float], points: pd.DataFrame, ax=None, gpu_gbs: float | None = None
):
    """Log-log roofline: one line per measured bandwidth, one marker per measured run.

    `points` needs the columns label, bytes_per_token and generated_tps. `gpu_gbs` (from
    gpu_memory_bandwidth(); None without a GPU) adds the GPU memory's line.
    """
    if gpu_gbs:
        bandwidths = {**bandwidths, "GPU memory": gpu_gbs}
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.5))
    if points.empty:  # nothing measured (e.g. the tools were missing): the axes, named
        ax.set(title="Decode speed vs. the memory-bandwidth roofline: no measurements")
        return ax
    lo = points["bytes_per_token"].min() / 2
    hi = points["bytes_per_token"].max() * 2
    x = np.geomspace(lo, hi, 50)
    for name, gbs in bandwidths.items():
        ax.plot(x / 1e6, gbs * 1e9 / x, "--", label=f"roofline {name}: {gbs:.1f} GB/s")
    for row in points.itertuples():
        ax.scatter(row.bytes_per_token / 1e6, row.generated_tps, zorder=3)
        ax.annotate(
            row.label,
            (row.bytes_per_token / 1e6, row.generated_tps),
            textcoords="offset points",
            xytext=(6, 4),
            fontsize=8,
        )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="bytes read per generated token (MB)",
        ylabel="generated tokens/s",
        title="Decode speed vs. the memory-bandwidth roofline",
    )
    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 200, not 2 x 10^2
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def roofline_points(
    summary: pd.DataFrame,
    spec: ModelSpec,
    bandwidth_gbs: float,
    kv_type: str = "f16",
    gpu_gbs: float | None = None,
) -> pd.DataFrame:
    """Per configuration: bytes read per generated token, the roofline and the fraction reached.

    Bytes per token = the weights + the KV cache at the mean context length of the decode
    (prompt + half the generated tokens), in the cache type `kv_type` (llama.cpp's default
    f16). Each row is judged against the bus it read from (`bus`): `bandwidth_gbs` (the
    CPU's) for rows all on the CPU, `gpu_gbs` for rows all on the GPU (`gpu_share` 1); a row
    split across both, on the GPU without `gpu_gbs`, or on a server that does not say
    (`gpu_share` NaN), has no roofline (NaN) rather than the wrong one.
    """
    kv = [
        kv_cache_bytes(spec, max(1, round(p + g / 2)), kv_type=kv_type)
        for p, g in zip(summary["prompt_tokens"], summary["generated_tokens"], strict=True)
    ]
    per_token = [bytes_per_token(w, k) for w, k in zip(summary["weight_bytes"], kv, strict=True)]
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
    share = summary["gpu_share"] if "gpu_share" in summary else pd.Series(0.0, summary.index)
    points["bus"] = [
        "unknown" if np.isnan(s) else "CPU" if s == 0 else "GPU" if s == 1 else "CPU+GPU"
        for s in share
    ]
    bus_gbs = {"CPU": bandwidth_gbs, "GPU": gpu_gbs}
    points["roofline_tps"] = [
        roofline_tps(bus_gbs[bus], b) if bus_gbs.get(bus) else np.nan
        for bus, b in zip(points["bus"], per_token, strict=True)
    ]
    points["roofline_fraction"] = points["generated_tps"] / points["roofline_tps"]
    return points
