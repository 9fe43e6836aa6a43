"""An offline prompt guard: a SetFit classifier on a small encoder, benign vs. harmful.

Llama Guard needs gated multi-GB weights; a sentence encoder fine-tuned with SetFit
(SetFit, as in notebook 01) is 90 MB, runs in milliseconds on a CPU and works
where no Llama Guard exists (CI, the tiny profile). It only screens the user's prompt
and names no categories, so it is a cheap first filter, not a replacement. It is
trained and measured on llmops_lib/data/prompt_guard.csv, a SYNTHETIC set written
for this course (see the header of that file), with a fixed held-out split.
"""

from __future__ import annotations

import io
from importlib import resources
from typing import TYPE_CHECKING, Any

import pandas as pd

from ...core.errors import InputError, check_columns, fraction
from .guard_prompts import Category
from .verdicts import Verdict

HARMFUL = "harmful"
BENIGN = "benign"
# The classifier's one "category", so a refusal can say what flagged the message.
PROMPT_GUARD_CATEGORY = Category(code="PG", name="harmful or jailbreak prompt", prompt_name="")

if TYPE_CHECKING:  # the type only: lessons reach the engine through the session
    from ...engines.encoder import EncoderClassifier


def load_prompts(split: str | None = None) -> pd.DataFrame:
    """The shipped prompts (columns text, label, kind, split), or one split of them."""
    if split not in (None, "train", "test"):
        raise InputError(f"split={split!r}; use 'train', 'test' or None for all rows.")
    source = resources.files("llmops_lib") / "data" / "prompt_guard.csv"
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    body = "".join(line for line in lines if not line.startswith("#"))  # the header notes
    df = pd.read_csv(io.StringIO(body), dtype=str, keep_default_na=False)
    return df if split is None else df[df["split"] == split]


def train(
    train_df: pd.DataFrame, session: Any, iterations: int = 2, seed: int = 0
) -> EncoderClassifier:
    """Fine-tune the session's encoder on the rows of `train_df` (see encoder.train).

    Two iterations (288 pairs, 18 steps of 16 on the 72 shipped training prompts) are
    plenty here: one already flags 96 % of the held-out harmful prompts at 4 % false
    positives, and each iteration costs as much CPU time as the last. No progress bar:
    the training takes seconds, and its time is `train_s` on the returned classifier.
    """
    check_columns("train_df", train_df, ["text", "label"])
    labels = set(train_df["label"])
    if labels != {BENIGN, HARMFUL}:
        raise InputError(
            f"Training rows have labels {sorted(labels)}; the prompt guard needs both "
            f"{BENIGN!r} and {HARMFUL!r} (pass load_prompts('train'))."
        )
    return session.train(
        "encoder",
        train_df["text"],
        train_df["label"],
        iterations=iterations,
        seed=seed,
        progress=False,
    )


def evaluate(clf: EncoderClassifier, test_df: pd.DataFrame) -> pd.DataFrame:
    """Predictions with P(harmful) for each held-out row (columns added to `test_df`)."""
    proba = clf.predict_proba(test_df["text"])
    out = test_df.copy()
    out["p_harmful"] = proba[HARMFUL].to_numpy()
    out["predicted"] = [HARMFUL if p >= 0.5 else BENIGN for p in out["p_harmful"]]
    return out


def metrics(scored: pd.DataFrame) -> pd.Series:
    """Accuracy, precision, recall and false-positive rate, with 'harmful' as the positive
    class, and the counts behind them.

    accuracy: the share of all prompts judged right; precision: of the prompts flagged,
    the share that were harmful; recall: of the harmful prompts, the share flagged; FPR: of
    the benign prompts, the share flagged (each one a user wrongly refused).
    """
    from sklearn.metrics import confusion_matrix

    truth = scored["label"] == HARMFUL
    flagged = scored["predicted"] == HARMFUL
    if truth.all() or not truth.any():
        raise InputError("metrics() needs harmful and benign rows in the scored set.")
    counts = confusion_matrix(truth, flagged, labels=[False, True]).ravel()
    tn, fp, fn, tp = (int(n) for n in counts)
    return pd.Series(
        {
            "accuracy": (tp + tn) / (tp + fp + fn + tn),
            "precision": tp / (tp + fp) if tp + fp else float("nan"),
            "recall": tp / (tp + fn),
            "false_positive_rate": fp / (fp + tn),
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "tn": tn,
        }
    )


def metrics_text(scored: pd.DataFrame) -> str:
    """metrics() as one line per figure, each with the counts it was computed from."""
    m = metrics(scored)
    tp, fp, fn, tn = (int(m[k]) for k in ("tp", "fp", "fn", "tn"))
    rows = [
        ("accuracy", m["accuracy"], tp + tn, tp + fp + fn + tn, "prompts judged right"),
        ("precision", m["precision"], tp, tp + fp, "flagged prompts that were harmful"),
        ("recall", m["recall"], tp, tp + fn, "harmful prompts flagged"),
        ("false-positive rate", m["false_positive_rate"], fp, fp + tn, "benign prompts flagged"),
    ]
    head = f"{tp + fp + fn + tn} prompts ({tp + fn} harmful, {fp + tn} benign)"
    return "\n".join(
        [head] + [f"  {name} {value:.3f} ({k}/{n}: {what})" for name, value, k, n, what in rows]
    )


def by_kind(scored: pd.DataFrame) -> pd.DataFrame:
    """Share flagged as harmful per kind of prompt (everyday, alarming-words, ...)."""
    flagged = (scored["predicted"] == HARMFUL).rename("flagged")
    return (
        flagged.groupby(scored["kind"])
        .agg(["size", "mean"])
        .rename(columns={"size": "prompts", "mean": "share_flagged"})
    )


class PromptGuard:
    """The trained classifier as an input guard for pipeline.GuardedChat.

    It judges user messages only; asked to judge a reply it raises, which the pipeline
    counts as unsafe (fail closed): use an LLM guard for the output check.
    """

    name = "offline prompt guard (SetFit)"

    def __init__(self, clf: EncoderClassifier, threshold: float = 0.5) -> None:
        self.clf = clf
        self.threshold = fraction("threshold", threshold)

    def judge(self, messages: list[dict[str, str]]) -> Verdict:
        last = messages[-1] if messages else {}
        if last.get("role") != "user":
            raise InputError(
                "The prompt guard judges user messages only; the last message here is "
                f"{last.get('role')!r}. Use a Llama Guard model for the output check."
            )
        p = float(self.clf.predict_proba([last["content"]])[HARMFUL].iloc[0])
        raw = f"p_harmful={p:.2f}"
        if p < self.threshold:
            return Verdict(safe=True, raw=raw)
        return Verdict(safe=False, categories=(PROMPT_GUARD_CATEGORY,), raw=raw)
