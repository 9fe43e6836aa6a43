"""llama.cpp's quantization tools: make a quantized GGUF, then judge it against its source.

`llama-quantize` writes one file per quantization type, `llama-imatrix` measures which
weights matter most on a calibration text, and `llama-perplexity` scores a model on a text:
perplexity on its own, and with `--kl-divergence` how far each quantized model's next-token
distribution drifts from the full-precision one, token by token (how llama.cpp itself judges
its quantizations). The tools are run as child processes and their logs parsed here; they
exit 0 even when the text was too short, so the parsers, not the exit code, decide success.
Every output file is written under a temporary name and renamed: a failed run leaves nothing.
"""

from __future__ import annotations

import re
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path

from ..core import results
from ..core.errors import InputError, unknown, whole
from ..core.hardware import threads
from ..planning.gguf_header import check_gguf, file_start
from ..planning.tools import kv_cache_flags, tool_path

# The types llama-quantize accepts (tools/quantize/quantize.cpp, llama-cpp-python 0.3.36).
QUANT_TYPES = (
    "F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M",
    "Q4_K_S", "Q4_1", "Q4_0", "IQ4_NL", "IQ4_XS", "Q3_K_L", "Q3_K_M", "Q3_K_S", "IQ3_M",
    "IQ3_S", "IQ3_XS", "IQ3_XXS", "Q2_K", "Q2_K_S", "IQ2_M", "IQ2_S", "IQ2_XS", "IQ2_XXS",
    "IQ1_M", "IQ1_S", "TQ2_0", "TQ1_0",
)  # fmt: skip
LOGITS_MAGIC = b"_logits_"  # how llama-perplexity's --kl-divergence-base file starts
MIN_KLD_TOKENS = 100  # fewer scored tokens and llama-perplexity prints no KL statistics

_FLOAT = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
_TOO_SHORT = re.compile(r"tokenizes to only (\d+) tokens")
_REQUANTIZE = re.compile(r"requantizing from type (\w+) is disabled")
_PPL_FINAL = re.compile(rf"Final estimate: PPL = {_FLOAT} \+/- {_FLOAT}")
_PPL_SETUP = re.compile(r"perplexity over (\d+) chunks, n_ctx=(\d+)")
# The load log's summary of the KV cache (printed at verbosity 4 and above), e.g.
# "llama_kv_cache: size =   23.91 MiB (  2048 cells,  30 layers,  1/1 seqs), K (q8_0): ..."
_KV_SIZE = re.compile(rf"llama_kv_cache: size = +{_FLOAT} MiB \( *(\d+) cells, +(\d+) layers")
_KLD_STATS = {  # key: the label of its line in the statistics block
    "ppl": r"Mean PPL\(Q\)\s*:",
    "ppl_base": r"Mean PPL\(base\)\s*:",
    "kld": r"Mean\s+KLD:",
    "kld_99": r"99\.0%\s+KLD:",
    "kld_max": r"Maximum KLD:",
    "same_top_pct": r"Same top p:",
}


class TextTooShortError(ValueError):
    """A text with fewer tokens than two contexts: the tools need one to read, one to score."""


def run_tool(name: str, args: Sequence[str | Path | int], timeout_s: float = 600) -> str:
    """Run one of llama.cpp's tools and return its whole log (stdout and stderr together).

    A non-zero exit raises RuntimeError with the command and the end of the log.
    subprocess.run kills the child on a timeout or an interrupt, so none outlives the call.
    """
    cmd = command(name, args)
    proc = subprocess.run(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout_s,
    )
    if proc.returncode != 0:
        _raise_known_errors(name, proc.stdout)
        raise RuntimeError(
            f"{name} failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}"
        )
    return proc.stdout


def command(name: str, args: Sequence[str | Path | int]) -> list[str]:
    """The argv run_tool() runs for one of llama.cpp's tools (tools.shown_command prints it
    without this machine's folders)."""
    return [str(tool_path(name)), *map(str, args)]


def log_excerpt(log: str) -> str:
    """The lines of a llama-perplexity log that its parsers read, without the timestamps:
    the chunks it scored, each chunk's running perplexity, the final estimate with its
    uncertainty, and with --kl-divergence the perplexity and KL statistics blocks."""
    lines = [_STAMP.sub("", line) for line in log.splitlines()]
    kept = [line for line in lines if _EXCERPT.search(line)]
    start = next((i for i, line in enumerate(lines) if "Perplexity statistics" in line), None)
    if start is not None:
        end = next(i for i, line in enumerate(lines) if "Token probability statistics" in line)
        kept += [line for line in lines[start:end] if line.strip()]
        kept += [line for line in lines[end:] if line.startswith("Same top p")]
    return "\n".join(kept)


_STAMP = re.compile(r"^\d+\.\d+\.\d+\.\d+ [A-Z] ")  # "0.04.093.180 I ": time and level
_EXCERPT = re.compile(r"calculating perplexity over|^\[1\]|Final estimate")


def _raise_known_errors(name: str, log: str, n_ctx: int | None = None) -> None:
    """The failures a caller can fix, each with what to do instead of a log to read."""
    if match := _TOO_SHORT.search(log):
        tokens = int(match.group(1))
        need = f"{2 * n_ctx} tokens (two contexts of {n_ctx})" if n_ctx else "two contexts"
        raise TextTooShortError(
            f"{name}: the text has only {tokens} tokens, it needs at least {need}. "
            "Use a longer text or a smaller context (n_ctx)."
        )
    if match := _REQUANTIZE.search(log):
        raise InputError(
            f"{name}: the source is already quantized ({match.group(1)}); quantizing it again "
            "compounds the errors. Quantize from an F16/F32 file, or pass "
            "allow_requantize=True to de-quantize it on purpose (e.g. to F16)."
        )


def check_type(qtype: str) -> str:
    """The quantization type, or UnknownNameError listing the ones llama-quantize knows."""
    if qtype not in QUANT_TYPES:
        raise unknown(qtype, "quantization type", QUANT_TYPES)
    return qtype


def quantize(
    source: str | Path,
    target: str | Path,
    qtype: str,
    imatrix: str | Path | None = None,
    allow_requantize: bool = False,
    n_threads: int | None = None,
    timeout_s: float = 600,
) -> Path:
    """Write `source` quantized to `qtype` as `target` (which must not exist yet).

    `imatrix` (from make_imatrix) weights each column's rounding error by how strongly the
    calibration text activates it. `allow_requantize` lets an already quantized source be
    converted, which is how a de-quantized F16 reference is made from a Q4 file.
    """
    quantize_args(source, target, qtype, imatrix, allow_requantize, n_threads)  # checked first

    def write(tmp: Path) -> None:
        args = quantize_args(source, tmp, qtype, imatrix, allow_requantize, n_threads)
        run_tool("llama-quantize", args, timeout_s)

    return results.write_atomic(target, write)


def quantize_args(
    source: str | Path,
    target: str | Path,
    qtype: str,
    imatrix: str | Path | None = None,
    allow_requantize: bool = False,
    n_threads: int | None = None,
) -> list[str | Path | int]:
    """llama-quantize's arguments for quantize(), checked (the source and imatrix exist)."""
    source = check_gguf(source)
    check_type(qtype)
    options: list[str | Path | int] = ["--allow-requantize"] if allow_requantize else []
    if imatrix is not None:
        options += ["--imatrix", check_gguf(imatrix)]
    return [*options, source, target, qtype, threads(n_threads)]


def make_imatrix(
    model: str | Path,
    text: str | Path,
    target: str | Path,
    n_ctx: int = 512,
    chunks: int = -1,
    n_threads: int | None = None,
    timeout_s: float = 600,
) -> Path:
    """Write the importance matrix of `model` on the calibration `text` as `target` (GGUF).

    `chunks=-1` reads the whole text, n_ctx tokens at a time.
    """
    imatrix_args(model, text, target, n_ctx, chunks, n_threads)  # checked first

    def write(tmp: Path) -> None:
        args = imatrix_args(model, text, tmp, n_ctx, chunks, n_threads)
        log = run_tool("llama-imatrix", args, timeout_s)
        _raise_known_errors("llama-imatrix", log, n_ctx)

    return results.write_atomic(target, write)


def imatrix_args(
    model: str | Path,
    text: str | Path,
    target: str | Path,
    n_ctx: int = 512,
    chunks: int = -1,
    n_threads: int | None = None,
) -> list[str | Path | int]:
    """llama-imatrix's arguments for make_imatrix(), checked."""
    return [*_reading_args(model, text, n_ctx, chunks, n_threads), "-o", target, "--no-ppl"]


def perplexity(
    model: str | Path,
    text: str | Path,
    n_ctx: int = 512,
    chunks: int = -1,
    logits_file: str | Path | None = None,
    n_threads: int | None = None,
    timeout_s: float = 600,
    kv_type: str | None = None,
) -> dict[str, float]:
    """Perplexity of `model` on the first `chunks` contexts of `text` (-1: all of it).

    Each chunk of n_ctx tokens is read whole and only its second half is scored, so every
    scored token has at least n_ctx/2 tokens before it. With `logits_file`, the model's
    log-probabilities are saved there (created; must not exist) as the reference for
    kl_divergence(). With `kv_type` (see cache_args) the result also holds the KV cache
    llama.cpp allocated (kv_mib, kv_cells).
    """
    args = perplexity_args(model, text, n_ctx, chunks, None, n_threads, kv_type)
    if logits_file is None:
        log = run_tool("llama-perplexity", args, timeout_s)
        return parse_perplexity(log, n_ctx) | _kv_figures(log, kv_type)
    if chunks != -1 and chunks * scored_per_chunk(n_ctx) < MIN_KLD_TOKENS:
        raise InputError(
            f"chunks={chunks} of n_ctx={n_ctx} score {chunks * scored_per_chunk(n_ctx)} tokens; "
            f"a KL-divergence reference needs at least {MIN_KLD_TOKENS} (llama-perplexity "
            "prints no statistics below that). Use more chunks or a larger n_ctx."
        )
    found: dict[str, float] = {}

    def write(tmp: Path) -> None:
        args = perplexity_args(model, text, n_ctx, chunks, tmp, n_threads, kv_type)
        log = run_tool("llama-perplexity", args, timeout_s)
        found.update(parse_perplexity(log, n_ctx) | _kv_figures(log, kv_type))

    results.write_atomic(logits_file, write)
    return found


def perplexity_args(
    model: str | Path,
    text: str | Path,
    n_ctx: int = 512,
    chunks: int = -1,
    logits_file: str | Path | None = None,
    n_threads: int | None = None,
    kv_type: str | None = None,
) -> list[str | Path | int]:
    """llama-perplexity's arguments for perplexity(), checked; with `logits_file`, the flag
    that saves the reference's log-probabilities there."""
    args = _reading_args(model, text, n_ctx, chunks, n_threads) + cache_args(kv_type)
    return args if logits_file is None else [*args, "--kl-divergence-base", logits_file]


def kl_divergence(
    model: str | Path,
    logits_file: str | Path,
    n_threads: int | None = None,
    timeout_s: float = 600,
    kv_type: str | None = None,
) -> dict[str, float]:
    """Perplexity and KL divergence of `model` against the reference in `logits_file`.

    The tokens come from the logits file, so both models read exactly the same text.
    Returns ppl (this model), ppl_base (the reference), the mean, 99th-percentile and
    largest KL divergence per token (nats), and how often both pick the same top token (%).
    With `kv_type` the model reads with that KV cache (see cache_args), and the result
    holds the cache llama.cpp allocated (kv_mib, kv_cells): the reference can be the same
    model with an f16 cache, so the divergence is what the cache type costs.
    """
    args = kl_divergence_args(model, logits_file, logits_context(logits_file), n_threads, kv_type)
    log = run_tool("llama-perplexity", args, timeout_s)
    return parse_kl_divergence(log) | _kv_figures(log, kv_type)


def kl_divergence_args(
    model: str | Path,
    logits_file: str | Path,
    n_ctx: int,
    n_threads: int | None = None,
    kv_type: str | None = None,
) -> list[str | Path | int]:
    """llama-perplexity's arguments for kl_divergence() against a reference written with
    context `n_ctx` (the file's own, for a file that exists: logits_context)."""
    args = ["-m", check_gguf(model), "--kl-divergence-base", logits_file, "--kl-divergence"]
    return [
        *args,
        "-c",
        whole("n_ctx", n_ctx),
        "-b",
        n_ctx,
        "-t",
        threads(n_threads),
    ] + cache_args(kv_type)


def cache_args(kv_type: str | None) -> list[str]:
    """llama-perplexity's arguments for a KV cache of `kv_type` (tools.kv_cache_flags), at
    verbosity 4, where its load log prints the cache's size; none for None."""
    return [] if kv_type is None else [*kv_cache_flags(kv_type), "-lv", "4"]


def parse_kv_cache(log: str) -> dict[str, float]:
    """The KV cache a llama.cpp tool allocated, from its load log (verbosity >= 4): kv_mib
    (MiB = 2**20 bytes, as llama.cpp counts them) and kv_cells (tokens it holds)."""
    match = _KV_SIZE.search(log)
    if match is None:
        raise RuntimeError(
            f"The llama.cpp log shows no 'llama_kv_cache: size' line (run it with -lv 4):\n"
            f"{log[-2000:]}"
        )
    return {"kv_mib": float(match.group(1)), "kv_cells": int(match.group(2))}


def _kv_figures(log: str, kv_type: str | None) -> dict[str, float]:
    return {} if kv_type is None else parse_kv_cache(log)


def scored_per_chunk(n_ctx: int) -> int:
    """Tokens llama-perplexity scores in one chunk: the second half, less the last one."""
    return n_ctx - 1 - n_ctx // 2


def logits_context(path: str | Path) -> int:
    """The context length a --kl-divergence-base file was written with; checks the file."""
    path = Path(path)
    advice = "Write it first with perplexity(reference_model, text, logits_file=...)."
    head = file_start(path, len(LOGITS_MAGIC) + 4, "Reference logits file", advice)
    if len(head) < len(LOGITS_MAGIC) + 4 or not head.startswith(LOGITS_MAGIC):
        raise InputError(
            f"{str(path)!r} is not a llama-perplexity logits file (no {LOGITS_MAGIC!r} "
            "header). Write it again with perplexity(..., logits_file=...)."
        )
    return struct.unpack("<I", head[len(LOGITS_MAGIC) :])[0]


def _reading_args(
    model: str | Path, text: str | Path, n_ctx: int, chunks: int, n_threads: int | None
) -> list[str | Path | int]:
    """The arguments llama-perplexity and llama-imatrix share, checked."""
    model = check_gguf(model)
    text = Path(text)
    if not text.is_file():
        raise FileNotFoundError(f"Text file not found: {str(text)!r}.")
    whole("n_ctx", n_ctx)
    if not isinstance(chunks, int) or (chunks < 1 and chunks != -1):
        raise InputError(f"chunks={chunks!r} must be a whole number >= 1, or -1 for all.")
    # One chunk per batch: the KV cache holds one context, not eight (llama.cpp's default).
    size = ["-c", n_ctx, "-b", n_ctx]
    return ["-m", model, "-f", text, *size, "--chunks", chunks, "-t", threads(n_threads)]


def parse_perplexity(log: str, n_ctx: int | None = None) -> dict[str, float]:
    """llama-perplexity's log -> ppl, its uncertainty, chunks and context.

    A text too short for two contexts raises TextTooShortError (the tool itself exits 0).
    """
    _raise_known_errors("llama-perplexity", log, n_ctx)
    final, setup = _PPL_FINAL.search(log), _PPL_SETUP.search(log)
    if not (final and setup):
        raise RuntimeError(f"llama-perplexity printed no final estimate:\n{log[-2000:]}")
    return {
        "ppl": float(final.group(1)),
        "ppl_err": float(final.group(2)),
        "chunks": int(setup.group(1)),
        "n_ctx": int(setup.group(2)),
    }


def parse_kl_divergence(log: str) -> dict[str, float]:
    """llama-perplexity --kl-divergence's statistics block -> one number per key."""
    if "Perplexity statistics" not in log and "kl_divergence: computing over" in log:
        raise InputError(
            f"llama-perplexity scored fewer than {MIN_KLD_TOKENS} tokens and printed no KL "
            "statistics; write the reference with more chunks or a larger n_ctx."
        )
    found: dict[str, float] = {}
    for key, label in _KLD_STATS.items():
        match = re.search(rf"{label}\s*{_FLOAT}", log)
        if match is None:
            raise RuntimeError(
                f"llama-perplexity --kl-divergence printed no {key} statistic:\n{log[-2000:]}"
            )
        found[key] = float(match.group(1))
    return found
