"""Notebook 09's experiment: one model in many llama.cpp quantizations, measured side by side.

For every type: the file's size and bits per weight, perplexity on the shipped text, the KL
divergence of its next-token distribution from the full-precision reference, and llama-bench's
prefill and decode speed; then the plots and the slides' published table beside ours.
Quantized files are cached by the source's content (making them is the slow, repeatable
part); the measurements are taken afresh on every run.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.metadata import version
from pathlib import Path

import pandas as pd

from ...core import datasets, results
from ...core.errors import InputError
from ...planning import gguf_header, profiles, roofline
from ...planning.provision import cache_dir
from ...planning.tools import missing, say_skipped, shown_command, skipped
from ...programs import llama_bench, quantize

QUANTIZATION = results.Kind("quantization-09", ".csv", "09", "quality of each quantization type")

REFERENCE = "F16"
EVAL_TEXT, CALIBRATION_TEXT = datasets.TEXTS  # scored on the first, calibrated on the second
TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K")
IMATRIX_TYPE = "Q2_K"  # the low-bit type made a second time with an importance matrix
# measure()'s columns, one row per type.
COLUMNS = ["file_mb", "bits_per_weight", "size_vs_f16", "ppl", "ppl_vs_f16_pct", "kld", "kld_99"]
COLUMNS += ["same_top_pct", "prompt_tps", "generated_tps", "tensor_types"]


@dataclass(frozen=True)
class Settings:
    """How much text and benchmark each model gets: the only thing that differs by machine."""

    n_ctx: int  # tokens per chunk; only the second half of each chunk is scored
    chunks: int  # chunks of the evaluation text scored (-1: all of it)
    imatrix_chunks: int  # chunks of the calibration text (-1: all of it)
    bench_prompt: int  # llama-bench prefill tokens
    bench_gen: int  # llama-bench decoded tokens
    bench_reps: int
    types: tuple[str, ...] = TYPES


# QUICK: the tiny profile in CI on 2 cores (512 of the text's 9,679 tokens, 254 scored).
# FULL: the whole text, and the slides' Q5_K_S and Q4_K_S as well.
QUICK = Settings(n_ctx=256, chunks=2, imatrix_chunks=4, bench_prompt=64, bench_gen=16, bench_reps=2)
FULL = Settings(
    n_ctx=512,
    chunks=-1,
    imatrix_chunks=-1,
    bench_prompt=256,
    bench_gen=64,
    bench_reps=3,
    types=("Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "Q4_0", "Q3_K_M", "Q2_K"),
)


def settings_for(profile: str) -> Settings:
    """QUICK on a quick profile (`tiny`: CI, a laptop), FULL on every other profile."""
    return QUICK if profiles.get(profile).quick else FULL


def imatrix_unavailable() -> str | None:
    """Why the importance-matrix variant cannot be made here, or None when it can."""
    return missing("llama-imatrix")


def source_folder(source: str | Path) -> Path:
    """The cache folder for files made from `source`: named by its content and llama.cpp.

    A different source file, or a different llama.cpp (whose quantizers may change), gets a
    folder of its own, so a cached file is always the one this run would make.
    """
    source = Path(source)
    digest = hashlib.sha256()
    with source.open("rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    name = f"{source.stem}-{digest.hexdigest()[:16]}-llama-cpp-{version('llama-cpp-python')}"
    folder = cache_dir() / "quant-sweep" / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _cached(target: Path, make: Callable[[Path], Path]) -> Path:
    """`target` if an earlier run made it, else make it (written atomically by `make`)."""
    if not target.is_file():
        try:
            make(target)
        except FileExistsError:
            pass  # another process finished the same file first
    return target


def quantized_files(
    source: str | Path,
    settings: Settings,
    imatrix_type: str | None = IMATRIX_TYPE,
    n_threads: int | None = None,
) -> dict[str, Path]:
    """The reference and every quantized file, made once and then found in the cache.

    The reference is `source` converted to F16. A source that is itself quantized is
    de-quantized by this step: then F16 is the best the source can offer, not the original.
    With `imatrix_type`, that type is made once more with an importance matrix measured on
    the calibration text (never the evaluation text, which would flatter it).
    Without a built llama-quantize it prints why and returns no files (measure() then
    gives a table with no figures).
    """
    reason = missing("llama-quantize")
    if reason is not None:
        say_skipped(reason)
        return {}
    folder = source_folder(source)
    reference = _cached(
        folder / f"{REFERENCE}.gguf",
        lambda t: quantize.quantize(
            source, t, REFERENCE, allow_requantize=True, n_threads=n_threads
        ),
    )
    files = {REFERENCE: reference}
    for qtype in settings.types:
        files[qtype] = _cached(
            folder / f"{quantize.check_type(qtype)}.gguf",
            lambda t, q=qtype: quantize.quantize(reference, t, q, n_threads=n_threads),
        )
    if imatrix_type is not None:
        text = datasets.text_path(CALIBRATION_TEXT)
        imatrix = _cached(
            _imatrix_file(folder, settings),
            lambda t: quantize.make_imatrix(
                reference, text, t, settings.n_ctx, settings.imatrix_chunks, n_threads
            ),
        )
        files[f"{imatrix_type}+imatrix"] = _cached(
            folder / f"{quantize.check_type(imatrix_type)}-{imatrix.stem}.gguf",
            lambda t: quantize.quantize(reference, t, imatrix_type, imatrix, n_threads=n_threads),
        )
    return files


def _imatrix_file(folder: Path, settings: Settings) -> Path:
    """Where the importance matrix of these settings is cached (by context and chunks)."""
    return folder / f"imatrix-c{settings.n_ctx}-k{settings.imatrix_chunks}.gguf"


def commands(
    source: str | Path, files: dict[str, Path], settings: Settings, n_threads: int | None = None
) -> dict[str, str]:
    """The command line of each kind of step quantized_files() and measure() run, built by
    the same argument functions (tools.shown_command: file names, not this machine's folders).

    One quantized type stands for all (the last of `settings.types`); the imatrix steps only
    where that variant was made; `reference.logits` stands for measure()'s temporary file.
    """
    if not files:  # quantized_files() made none: it printed why
        return {}
    if REFERENCE not in files:
        raise InputError(f"commands() needs the {REFERENCE} reference among {list(files)}.")
    ref, qtype = files[REFERENCE], settings.types[-1]
    logits = "reference.logits"
    steps = {
        "the F16 reference": (
            "llama-quantize",
            quantize.quantize_args(source, ref, REFERENCE, None, True, n_threads),
        ),
        f"one type, {qtype}": (
            "llama-quantize",
            quantize.quantize_args(ref, files[qtype], qtype, n_threads=n_threads),
        ),
    }
    if f"{IMATRIX_TYPE}+imatrix" in files:
        imatrix = _imatrix_file(source_folder(source), settings)
        text = datasets.text_path(CALIBRATION_TEXT)
        steps["the importance matrix"] = (
            "llama-imatrix",
            quantize.imatrix_args(
                ref, text, imatrix, settings.n_ctx, settings.imatrix_chunks, n_threads
            ),
        )
        steps[f"{IMATRIX_TYPE} with it"] = (
            "llama-quantize",
            quantize.quantize_args(
                ref, files[f"{IMATRIX_TYPE}+imatrix"], IMATRIX_TYPE, imatrix, n_threads=n_threads
            ),
        )
    text = datasets.text_path(EVAL_TEXT)
    steps["perplexity of F16, its log-probabilities saved"] = (
        "llama-perplexity",
        quantize.perplexity_args(ref, text, settings.n_ctx, settings.chunks, logits, n_threads),
    )
    steps[f"{qtype} against them"] = (
        "llama-perplexity",
        quantize.kl_divergence_args(files[qtype], logits, settings.n_ctx, n_threads),
    )
    return {step: shown_command([tool, *args]) for step, (tool, args) in steps.items()}


def measure(
    files: dict[str, Path], settings: Settings, n_threads: int | None = None, speed: bool = True
) -> pd.DataFrame:
    """One row per file: size, bits per weight, perplexity, KL divergence to F16, speed.

    `speed=False` skips llama-bench (the speed columns stay empty) when only quality counts.
    Without llama.cpp's tools it prints why and returns the rows with no figures (NaN), which
    the plots and helpers below accept.

    The reference's log-probabilities are written once to a temporary file (about 100 kB
    per scored token for a 49k vocabulary) and removed afterwards.
    """
    # No files made, or none can be scored: the rows, with no figures.
    reason = missing("llama-perplexity") or (None if files else missing("llama-quantize"))
    if reason is not None:
        table = skipped(reason, pd.Index([REFERENCE, *settings.types], name="type"), COLUMNS)
        table.attrs["scored_tokens"] = 0
        return table
    if REFERENCE not in files:
        raise InputError(f"measure() needs the {REFERENCE} reference among {list(files)}.")
    if speed and (reason := missing("llama-bench")) is not None:
        print(f"speed not measured: {reason}")
        speed = False
    text = datasets.text_path(EVAL_TEXT)
    rows = []
    with tempfile.TemporaryDirectory(prefix="llmops-kld-") as tmp:
        logits = Path(tmp) / "reference.logits"
        base = quantize.perplexity(
            files[REFERENCE], text, settings.n_ctx, settings.chunks, logits, n_threads
        )
        same = {"ppl": base["ppl"], "kld": 0.0, "kld_99": 0.0, "same_top_pct": 100.0}
        for name, path in files.items():
            quality = same if name == REFERENCE else quantize.kl_divergence(path, logits, n_threads)
            rows.append(_row(name, path, quality, settings if speed else None, n_threads))
    table = pd.DataFrame(rows).set_index("type")
    ref = table.loc[REFERENCE]
    table.insert(2, "size_vs_f16", table["file_mb"] / ref["file_mb"])
    table.insert(4, "ppl_vs_f16_pct", 100 * (table["ppl"] / ref["ppl"] - 1))
    table.attrs["scored_tokens"] = base["chunks"] * quantize.scored_per_chunk(base["n_ctx"])
    return table


def _row(
    name: str, path: Path, quality: dict, bench: Settings | None, n_threads: int | None
) -> dict:
    weights = gguf_header.weight_summary(path)
    tps = {"prompt_tps": float("nan"), "generated_tps": float("nan")}
    if bench is not None:
        speed = llama_bench.llama_bench(
            path, n_threads, bench.bench_prompt, bench.bench_gen, bench.bench_reps
        )
        tps["prompt_tps"] = speed.loc[speed["n_gen"] == 0, "tokens_per_s"].iloc[0]
        tps["generated_tps"] = speed.loc[speed["n_prompt"] == 0, "tokens_per_s"].iloc[0]
    return {
        "type": name,
        "file_mb": weights["data_bytes"] / 1e6,
        "bits_per_weight": weights["bits_per_weight"],
        "ppl": quality["ppl"],
        "kld": quality["kld"],
        "kld_99": quality["kld_99"],
        "same_top_pct": quality["same_top_pct"],
        **tps,
        "tensor_types": " · ".join(
            f"{t} {share:.0%}" for t, share in weights["type_shares"].items() if share >= 0.01
        ),
    }


def smallest_within(table: pd.DataFrame, max_ppl_increase_pct: float) -> str:
    """The type with the smallest file whose perplexity is at most this much above F16's
    (F16 itself, with no figures, where the table was skipped for want of the tools)."""
    if table.attrs.get("skipped"):  # nothing measured: the reference, with no figures
        return REFERENCE
    fits = table[table["ppl_vs_f16_pct"] <= max_ppl_increase_pct]
    if fits.empty:
        raise ValueError(f"No type stays within {max_ppl_increase_pct}% of F16's perplexity.")
    return str(fits["file_mb"].idxmin())


def budget_table(table: pd.DataFrame, bounds: Sequence[float]) -> pd.DataFrame:
    """For each perplexity budget (% above F16): the smallest type within it, its size and
    its KL divergence: the decision rule the table supports."""
    chosen = [smallest_within(table, b) for b in bounds]
    return pd.DataFrame(
        {
            "smallest type": chosen,
            "MB": table.loc[chosen, "file_mb"].to_numpy(),
            "KL divergence": table.loc[chosen, "kld"].to_numpy(),
        },
        index=pd.Index([f"perplexity within {b} % of F16" for b in bounds], name="budget"),
    )


def _against_size(ax, table: pd.DataFrame, column: str, label: str) -> None:
    """`column` against file size, one point per type labelled with its name."""
    table = table.dropna(subset=["file_mb", column])
    ax.scatter(table["file_mb"], table[column], zorder=3)
    for name, row in table.iterrows():
        ax.annotate(name, (row["file_mb"], row[column]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)  # fmt: skip
    ax.set(xlabel="weights in the file (MB)", ylabel=label)
    ax.grid(True, alpha=0.3)


def plot_speed(table: pd.DataFrame, bandwidths: dict[str, float], axes: Sequence | None = None):
    """Decode speed against the memory-bandwidth roofline, and prefill speed, by file size."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    roofline.plot_roofline(bandwidths, speed_points(table), ax=axes[0])
    _against_size(axes[1], table, "prompt_tps", "prompt tokens/s")
    axes[1].set_title("Prefill")
    return axes


def plot_quality(table: pd.DataFrame, axes: Sequence | None = None):
    """Perplexity and mean KL divergence against file size, one labelled point per type."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 4))
    if table.attrs.get("skipped"):
        for ax in axes[:2]:
            ax.set_title(f"skipped: {table.attrs['skipped']}"[:80], fontsize=8)
        return axes
    ref = table.loc[REFERENCE]
    _against_size(axes[0], table, "ppl", "perplexity (lower is better)")
    _against_size(axes[1], table, "kld", "mean KL divergence to F16, nats")
    axes[0].axhline(ref["ppl"], ls="--", color="grey", label="F16 reference")
    axes[0].legend(fontsize=8)
    axes[1].set_yscale("symlog", linthresh=1e-3)  # F16 sits at exactly 0
    return axes


def speed_points(table: pd.DataFrame) -> pd.DataFrame:
    """The decode measurements as roofline.plot_roofline() points: bytes read per token =
    the weights (the KV cache of a short llama-bench decode adds well under 1 %); types
    not measured (NaN) are left out."""
    table = table.dropna(subset=["file_mb", "generated_tps"])
    return pd.DataFrame(
        {
            "label": table.index,
            "bytes_per_token": table["file_mb"].to_numpy() * 1e6,
            "generated_tps": table["generated_tps"].to_numpy(),
        },
        index=table.index,
    )


def published_quality() -> pd.DataFrame:
    """The slides' LLaMA 7B/13B perplexity (wikitext) and file size by quantization type.

    Source: roofline.PUBLISHED_SOURCE (the same slide as notebook 07's ms/token table).
    """
    with resources.files("llmops_lib.data").joinpath("slides_perplexity.csv").open() as fh:
        ppl = pd.read_csv(fh, index_col="model")
    size = roofline.published_ms_per_token().xs("file size GB", level="setting")
    return pd.concat({"perplexity": ppl, "file size GB": size[ppl.columns]}, names=["measure"])


def beside_published(table: pd.DataFrame) -> pd.DataFrame:
    """Ours next to the slides', as what can be compared across models of different size:
    the file size as a share of F16's, and the perplexity increase over F16 in %."""
    published = published_quality()
    columns = {}
    for model in published.index.get_level_values("model").unique():
        ppl = published.loc[("perplexity", model)]
        size = published.loc[("file size GB", model)]
        columns[(f"LLaMA {model} (slides)", "size vs F16")] = size / size[REFERENCE]
        columns[(f"LLaMA {model} (slides)", "ppl +%")] = 100 * (ppl / ppl[REFERENCE] - 1)
    ours = table.reindex(published.columns)
    columns[("ours", "size vs F16")] = ours["size_vs_f16"]
    columns[("ours", "ppl +%")] = ours["ppl_vs_f16_pct"]
    return pd.DataFrame(columns)
