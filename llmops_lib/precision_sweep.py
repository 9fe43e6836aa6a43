"""Notebook 02's precision sweep: one model in each precision, side by side."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from .classify import classify, messages
from .progress import bar
from .scoring import accuracy, accuracy_interval, calibrate_threshold


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

    A precision this machine cannot run gets a row with the reason instead of a crash.
    """
    from . import hf

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
        except hf.PrecisionError as err:
            row["note"] = str(err)
        rows.append(row)
    return pd.DataFrame(rows).set_index("precision")
