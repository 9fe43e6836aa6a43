"""Notebook 02's precision sweep: one model in each precision, one after the other."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from ...core.errors import PrecisionError
from ...core.hardware import is_out_of_memory, release
from ...core.progress import bar
from ..classify import classify, messages
from ..scoring import accuracy, accuracy_interval, calibrate_threshold

FULL_PRECISIONS = ("fp32", "fp16", "bf16")
WORKSHOP = "DJCordhose/llm-ops@26808bc89f9102d4a26387721e76e28d4fabe192"
# (precision, GPU MiB after the load (cell 15), s for one answer (cell 23), right of 10
# (cell 30), notebook) as the workshop's runs printed them: Llama 3.1 8B Instruct on an L4,
# 2024-10-27/28, transformers 4.46.0, greedy, nvidia-smi's whole-card memory.
PUBLISHED_L4 = (
    ("bf16", 15637, 4.42, 8, "Present_Lllama_3.1_8B.ipynb"),
    ("int8", 8927, 8.53, 9, "Present_Lllama_3.1_8B_8bit.ipynb"),
    ("nf4", 5749, 5.64, 7, "Present_Lllama_3.1_8B_4bit.ipynb"),
)


def published_l4() -> pd.DataFrame:
    """Llama 3.1 8B Instruct in each precision as the ODSC 2024 workshop printed it on an L4.

    Why: the tiny model's sweep cannot show what quantizing a real model costs; these cited
    figures can (10 texts each: an accuracy of 7, 8 or 9 of 10 is not told apart).
    """
    columns = ["precision", "GPU MiB after load", "s per answer", "right of 10", "notebook"]
    table = pd.DataFrame(PUBLISHED_L4, columns=columns).set_index("precision")
    table["source"] = WORKSHOP
    return table


def precisions(session: Any) -> tuple[str, ...]:
    """The precisions the sweep compares for the session's classifier: its profile's own
    unquantized precision (fp32 on the tiny profile), else the GPU's 16-bit type (bf16
    where the GPU has it, fp16 on a T4); then int8 and nf4."""
    chosen = session.choice("classifier").precision
    if chosen not in FULL_PRECISIONS:
        chosen = "bf16" if session.hardware.bf16 else "fp16"
    return (chosen, "int8", "nf4")


def compare_precisions(
    load: Callable[[str], Any],
    precisions: tuple[str, ...],
    calibration: pd.DataFrame,
    evaluation: pd.DataFrame,
    examples: dict[str, pd.DataFrame] | None = None,
    n_tokens: int = 32,
) -> pd.DataFrame:
    """Load the model with `load(precision)` in each precision (a transformers model, e.g.
    `lambda p: session.model("classifier", precision=p)`): load time, footprint (measured
    and planned), decode tokens/s and the Yes/No-probability accuracy with a threshold
    calibrated per precision, with its 95 % Wilson interval (few texts: wide intervals).

    One model at a time: each is closed and its memory released before the next loads (a
    T4 holds one 8B model, not two). A precision this machine cannot run gets a row with
    the reason instead of a crash, and so does one that runs out of memory, after what it
    had loaded is freed.
    """
    rows = []
    for precision in bar(list(precisions), desc="precisions", unit="model"):  # one bar
        row: dict[str, Any] = {"precision": precision}
        try:
            with load(precision) as model:
                calib = classify(
                    model, calibration, generate=False, examples=examples, progress=False
                )
                threshold = calibrate_threshold(calib["p_positive"], calib["truth"])
                scored = classify(
                    model,
                    evaluation,
                    generate=False,
                    threshold=threshold,
                    examples=examples,
                    progress=False,
                )
                first = evaluation.iloc[0]
                msgs = messages(first.text, first.lang, (examples or {}).get(first.lang))
                model.chat(msgs, max_tokens=n_tokens, min_new_tokens=n_tokens)
                row |= {
                    "load s": model.load_s,
                    "footprint MB": model.weight_bytes() / 1e6,
                    "planned MB": model.plan.weights_gb * 1000,
                    "tokens/s": model.timings().generated_tps,
                    "threshold": threshold,
                    "accuracy": accuracy(scored, "prediction_p"),
                    "95% CI": "{:.2f} to {:.2f}".format(*accuracy_interval(scored, "prediction_p")),
                    "note": "",
                }
        except PrecisionError as err:
            row["note"] = str(err)
        except Exception as err:
            if not is_out_of_memory(err):
                raise
            said = (str(err).strip().splitlines() or [type(err).__name__])[0]
            row["note"] = f"out of memory, what it had loaded was freed: {said[:160]}"
        # Leaving the except clause dropped the traceback, and with it a failed load's
        # tensors; release() collects them before the next precision loads.
        release()
        rows.append(row)
    return pd.DataFrame(rows).set_index("precision")
