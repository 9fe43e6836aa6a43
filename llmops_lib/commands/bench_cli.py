"""`python -m llmops_lib.commands.bench_cli`: is the library free? Decode speed through llmops_lib,
through llama-cpp-python directly and in llama.cpp's own llama-bench, on the profile's chat
model, with the fraction of the memory-bandwidth roofline it reaches; saved as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import pandas as pd

from .. import setup
from ..core import results
from ..core.errors import whole
from ..lessons.nb07 import sweeps
from ..planning import roofline
from ..programs import llama_bench


def _count(text: str) -> int:
    """A command-line count: argparse names the option and exits, no traceback."""
    try:
        return whole("value", int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1") from None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """The benchmark command: print (and save) the JSON summary."""
    parser = argparse.ArgumentParser(
        prog="python -m llmops_lib.commands.bench_cli",
        description="Decode speed through llmops_lib vs. llama-cpp-python directly, and the "
        "fraction of the memory-bandwidth roofline it reaches (profile: LLMOPS_PROFILE).",
    )
    parser.add_argument(
        "--threads", type=_count, default=None, help="default: hardware.default_threads()"
    )
    parser.add_argument("--max-tokens", type=_count, default=64)
    parser.add_argument("--rounds", type=_count, default=25, help="interleaved library/raw pairs")
    parser.add_argument("--bench-reps", type=_count, default=3, help="llama-bench repetitions")
    args = parser.parse_args(argv)

    session = setup(quiet=True)
    load_before = os.getloadavg()[0]
    summary = sweeps.library_vs_raw(
        session, n_threads=args.threads, max_tokens=args.max_tokens, rounds=args.rounds
    )
    if summary["n_gpu_layers"] == 0:
        bandwidth = roofline.memory_bandwidth(threads=summary["n_threads"])
        row = pd.DataFrame([summary]).rename(columns={"library_tps": "generated_tps"})
        point = roofline.roofline_points(row, session.spec("chat"), bandwidth).iloc[0]
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
    raw = llama_bench.llama_bench(
        session.model_path("chat"),
        n_threads=summary["n_threads"],
        n_prompt=summary["prompt_tokens"],
        n_gen=args.max_tokens,
        n_depth=(0, summary["prompt_tokens"]),  # decode after the prompt, as the library does
        reps=args.bench_reps,
    )
    tg = llama_bench.phase_tps(raw)["generated"]
    summary.update(llama_bench_tg_tps=tg, library_llama_bench_ratio=summary["library_tps"] / tg)
    # Other programs' demand for the CPU (1-minute load average, before and after): a value
    # near or above the core count means the figures were taken on a busy machine.
    summary.update(load_average=[load_before, os.getloadavg()[0]], cpu_cores=os.cpu_count())
    text = json.dumps(summary, indent=2)
    print(text)
    path = results.save("bench", ".json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    print(f"saved to {path}")
    return summary


if __name__ == "__main__":
    main()
