"""llama.cpp's own benchmark, `llama-bench`: the raw engine's prefill and decode speed.

A baseline to hold the library's figures against: same model file, threads and lengths,
no Python in the loop.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import pandas as pd

from ..core.errors import InputError, check_columns, non_empty, positive, whole
from ..core.hardware import threads
from ..planning.gguf_header import check_gguf
from ..planning.tools import kv_cache_flags, missing, shown_command, skipped, tool_path


def llama_bench(
    model_path: str | Path,
    n_threads: int | None = None,
    n_prompt: int = 128,
    n_gen: int = 64,
    reps: int = 3,
    n_depth: tuple[int, ...] = (0,),
    n_gpu_layers: int | None = None,
    timeout_s: float = 600,
    kv_type: str | None = None,
) -> pd.DataFrame:
    """Run llama-bench: prefill (pp) and decode (tg) tokens/s, mean and std over `reps`.

    One row per test and depth (`pp128`, `tg64`, `tg64@d128`); `n_prompt=0` leaves out the
    prefill test. A depth is the number of tokens already in the KV cache when the test
    starts: decoding after a 128-token prompt, as a chat does, is `tg64@d128`, a little
    slower than from an empty cache. `kv_type` sets the cache's number format (f16, q8_0,
    q4_0, ...; tools.kv_cache_flags: flash attention on for every type); None keeps
    llama-bench's default. `n_gpu_layers=None` keeps llama-bench's default (all layers on
    the GPU when the tools were built for CUDA). Without a built llama-bench it prints why
    and returns those rows with no figures (NaN) instead of raising.
    """
    model = check_gguf(model_path)
    n = threads(n_threads)
    whole("n_prompt", n_prompt, minimum=0)
    whole("n_gen", n_gen)
    whole("reps", reps)
    for i, depth in enumerate(non_empty("n_depth", n_depth)):
        whole(f"n_depth[{i}]", depth, minimum=0)
    cache = [] if kv_type is None else kv_cache_flags(kv_type)
    reason = missing("llama-bench")
    if reason is not None:  # the rows llama-bench would give, with no figures
        tests = [(p, g, d) for d in n_depth for p, g in ((n_prompt, 0), (0, n_gen)) if p or g]
        table = skipped(reason, range(len(tests)), COLUMNS)
        table["test"] = [
            (f"pp{p}" if p else f"tg{g}") + (f"@d{d}" if d else "") for p, g, d in tests
        ]
        table[["n_prompt", "n_gen", "n_depth"]] = tests
        table["n_threads"] = n
        return table
    cmd = [str(tool_path("llama-bench")), "-m", str(model), "-t", str(n)]
    cmd += ["-p", str(n_prompt), "-n", str(n_gen), "-r", str(reps), "-o", "json"]
    cmd += ["-d", ",".join(map(str, n_depth))]
    cmd += cache
    if n_gpu_layers is not None:
        cmd += ["-ngl", str(n_gpu_layers)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(
            f"llama-bench failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}"
        )
    table = parse_bench_json(proc.stdout)
    table.attrs["command"], table.attrs["stdout"] = cmd, proc.stdout  # for shown_run()
    return table


def shown_run(table: pd.DataFrame) -> str:
    """What llama_bench() ran and what llama-bench printed, as a terminal would show it: the
    command line and the raw JSON of its first test (local folders shortened to file
    names), so a reader sees the engine under the parsed table; for a skipped run, why."""
    if "command" not in table.attrs:
        return f"llama-bench did not run: {table.attrs.get('skipped', 'no command recorded')}"
    lines = _LOCAL_PATH.sub(r'"\1"', table.attrs["stdout"]).splitlines()
    end = next((i for i, line in enumerate(lines) if line.strip() in ("},", "}")), len(lines) - 1)
    shown = lines[: end + 1]
    if end + 1 < len(lines) - 1:  # the closing bracket alone is not worth a line
        shown.append(f"  ... {len(table) - 1} more tests with the same fields ]")
    return "\n".join([f"$ {shown_command(table.attrs['command'])}", *shown])


_LOCAL_PATH = re.compile(r'"/(?:[^"/]+/)*([^"/]+)"')  # a JSON string holding an absolute path


COLUMNS = ["test", "n_prompt", "n_gen", "n_depth", "n_threads", "tokens_per_s"]
COLUMNS += ["tokens_per_s_std", "reps", "backend", "n_gpu_layers", "model"]


# What each run of llama-bench's JSON output must hold for a row.
_RUN_KEYS = ("n_prompt", "n_gen", "n_threads", "avg_ts", "stddev_ts", "backends", "n_gpu_layers")
_RUN_KEYS += ("model_type",)


def parse_bench_json(text: str) -> pd.DataFrame:
    """llama-bench `-o json` output -> one row per test with finite tokens/s figures.

    Anything else (empty, cut off, another tool's output) is an InputError that says what
    is missing and shows the start of the text.
    """

    def refused(why: str) -> InputError:
        shown = text[:300] if isinstance(text, str) else type(text).__name__
        return InputError(
            f"Not llama-bench's `-o json` output ({why}): {shown!r}. Pass the standard output "
            "of `llama-bench ... -o json`."
        )

    if not isinstance(text, str):
        raise refused("not text")
    try:
        runs = json.loads(text)
    except (ValueError, RecursionError) as err:  # nested past Python's limit: not llama-bench
        raise refused(f"not JSON: {err}") from None
    if not isinstance(runs, list) or not runs:
        raise refused("no list of runs: llama-bench printed no results")
    rows = []
    for i, run in enumerate(runs):
        missing = [k for k in _RUN_KEYS if not isinstance(run, dict) or k not in run]
        if missing:
            raise refused(f"run {i} lacks {', '.join(missing)}")
        pp, tg, depth = run["n_prompt"], run["n_gen"], run.get("n_depth", 0)
        if not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (pp, tg, depth)
        ):
            raise refused(f"run {i} has token counts {pp!r}, {tg!r}, {depth!r}")
        test = f"pp{pp}" if not tg else f"tg{tg}" if not pp else f"pp{pp}+tg{tg}"
        rows.append(
            {
                "test": test + (f"@d{depth}" if depth else ""),
                "n_prompt": pp,
                "n_gen": tg,
                "n_depth": depth,
                "n_threads": run["n_threads"],
                "tokens_per_s": run["avg_ts"],
                "tokens_per_s_std": run["stddev_ts"],
                "reps": len(run.get("samples_ts") or []),
                "backend": run["backends"],
                "n_gpu_layers": run["n_gpu_layers"],
                "model": run["model_type"],
            }
        )
    table = pd.DataFrame(rows)
    for column in ("tokens_per_s", "tokens_per_s_std"):
        table[column] = pd.to_numeric(table[column], errors="coerce")  # text: NaN, refused
    figures = table[["tokens_per_s", "tokens_per_s_std"]].to_numpy(dtype=float).ravel()
    if not all(math.isfinite(x) for x in figures) or (table["tokens_per_s"] <= 0).any():
        raise refused(f"non-finite or zero figures:\n{table}")
    return table


def phase_tps(table: pd.DataFrame) -> dict[str, float]:
    """What a chat call does, from one llama_bench() table: tokens/s of prefill from an empty
    cache ("prompt") and of decoding right after that prompt ("generated", at depth n_prompt).

    Run llama_bench(..., n_depth=(0, n_prompt)) to get both rows.
    """
    check_columns("table", table, ["test", "n_prompt", "n_gen", "n_depth", "tokens_per_s"])
    prompt = table[(table["n_gen"] == 0) & (table["n_depth"] == 0)]
    depth = int(prompt["n_prompt"].iloc[0]) if len(prompt) else -1
    generated = table[(table["n_prompt"] == 0) & (table["n_depth"] == depth)]
    if prompt.empty or generated.empty:
        raise InputError(
            f"llama-bench table {list(table['test'])} lacks a prefill test at depth 0 or a "
            f"decode test right after it; run llama_bench(..., n_depth=(0, n_prompt))."
        )
    return {
        "prompt": float(prompt["tokens_per_s"].iloc[0]),
        "generated": float(generated["tokens_per_s"].iloc[0]),
    }


def versus_library(table: pd.DataFrame, prompt_tps: float, generated_tps: float) -> pd.DataFrame:
    """The library's tokens/s beside llama-bench's; ratio 1.0 = the library costs nothing."""
    prompt_tps, generated_tps = (
        positive("prompt_tps", prompt_tps),
        positive("generated_tps", generated_tps),
    )
    raw = phase_tps(table)
    return pd.DataFrame(
        {
            "library": [prompt_tps, generated_tps],
            "llama-bench": [raw["prompt"], raw["generated"]],
        },
        index=["prompt tokens/s", "generated tokens/s"],
    ).assign(ratio=lambda d: d["library"] / d["llama-bench"])
