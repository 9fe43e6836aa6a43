"""An LLM as a judge of the assessment classifier's predictions, scored the way G-Eval does.

The judge reads an assessment, the verdict a classifier gave and its justification, and
scores 1 to 5 how likely the verdict is right. Two mechanisms make a small model's judgement
usable:

* the reply is constrained to the schema `{"score": 1..5}` (`JudgeScore`, sent as a
  `response_format` by `structured.ask`, which llama.cpp compiles into a grammar), so every
  reply parses; a reply that still fails (cut off by max_tokens) counts as no verdict and
  never passes;
* the score is not the one digit the model happened to emit but, as in G-Eval (Liu et al.,
  2023), the probability-weighted mean over the score tokens "1".."5" at the score's position
  (`weighted_score`), read from the engine's top log-probabilities. It is continuous, so two
  replies that both say 4 can still differ in how sure the judge was.

G-Eval also lets the LLM write the evaluation steps itself from the criteria; here they are
written out by hand, so only its scoring is used. Measure the judge before trusting it:
`agreement` compares its pass/fail with the ground truth (the 2 x 2 counts, accuracy, Cohen's
kappa, and the ROC AUC of the weighted score), and `grade` times every call.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict

from ...core.backend import ChatBackend
from ...core.errors import InputError
from ...core.progress import bar
from .. import structured
from ..classify import NEGATIVE, POSITIVE

SCORES = (1, 2, 3, 4, 5)
PASS_AT = 3.5  # a weighted score of 3.5 or more passes: nearer "probably right" than "unsure"
TOP_LOGPROBS = 20  # alternatives asked for at each position; "1".."5" are usually among them


class JudgeScore(BaseModel):
    """The judge's whole reply: one score from 1 (certainly wrong) to 5 (certainly right)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    score: Literal[1, 2, 3, 4, 5]


SYSTEM = "You are a careful reviewer of an automatic classifier of medical assessments."
PROMPT = """\
Task: an assessment of a requested medical aid was read by a classifier. Grade the \
classifier's verdict.

Evaluation criteria:
- Correctness: the verdict says what the assessment concludes. "recommended" means the \
assessment supports the requested aid; "not recommended" means it refuses it or proposes \
something else instead.
- Justification: the justification, if any, is consistent with the assessment.

Evaluation steps:
1. Read the assessment and decide yourself whether it recommends the requested aid.
2. Compare your decision with the classifier's verdict.
3. Check that the justification does not contradict the assessment.
4. Give a score from 1 to 5: 5 = the verdict is certainly right, 3 = unsure, 1 = the \
verdict is certainly wrong.

Assessment: {text}
Classifier's verdict: {verdict}
Justification: {justification}

Reply with one JSON object and nothing else: {{"score": N}}."""


def messages(text: str, predicted: str, justification: str = "") -> list[dict[str, str]]:
    """The judge's prompt for one prediction: criteria, steps, the case, the answer format."""
    verdicts = {POSITIVE: "recommended", NEGATIVE: "not recommended"}
    if predicted not in verdicts:
        raise InputError(
            f"predicted={predicted!r}: the judge grades {POSITIVE!r} or {NEGATIVE!r} verdicts."
        )
    prompt = PROMPT.format(
        text=text, verdict=verdicts[predicted], justification=justification.strip() or "(none)"
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]


def score_distribution(response: dict[str, Any]) -> dict[int, float] | None:
    """P(score) for 1..5 at the position where the reply wrote its score, from a chat
    completion asked with `logprobs=True, top_logprobs=k`; None when the reply has no score.

    Alternatives that spell the same digit (" 4" and "4") are added up; scores not among the
    top k get 0. The probabilities are the model's own (before the grammar masks anything),
    not renormalised: their sum is how much of its belief went to a valid score.
    """
    choice = (response.get("choices") or [{}])[0]
    content = (choice.get("logprobs") or {}).get("content")
    if not content:
        raise InputError(
            "The response has no token log-probabilities: ask with logprobs=True and "
            "top_logprobs=k (llama-cpp-python: load the model with logits_all=True)."
        )
    for position in content:
        if position["token"].strip() in {str(s) for s in SCORES}:
            probs = dict.fromkeys(SCORES, 0.0)
            for alt in position.get("top_logprobs") or [position]:
                token = alt["token"].strip()
                if token in {str(s) for s in SCORES}:
                    probs[int(token)] += math.exp(float(alt["logprob"]))
            return probs
    return None


def weighted_score(probs: dict[int, float]) -> float:
    """G-Eval's score: sum of s * P(s) over the scores, with P renormalised to sum to 1."""
    total = sum(probs.values())
    if total <= 0:
        raise InputError(f"probs={probs!r}: no probability on any score 1-5.")
    return sum(s * p for s, p in probs.items()) / total


def grade(
    model: ChatBackend,
    batch: pd.DataFrame,
    max_tokens: int = 16,
    pass_at: float = PASS_AT,
    top_logprobs: int = TOP_LOGPROBS,
    progress: bool = True,
) -> pd.DataFrame:
    """Ask the judge about every row of `batch` (columns text, predicted, answer), its reply
    constrained to `JudgeScore`, greedy, with the top log-probabilities of every token.

    Returns, per row: score (the digit the reply wrote; missing when it did not parse),
    weighted (G-Eval's probability-weighted score), mass (raw probability on "1".."5" at
    that position), p1..p5, passed (weighted >= pass_at; False without a score), the raw
    reply and judge_ms, the wall time of the call.
    """
    missing = {"text", "predicted", "answer"} - set(batch.columns)
    if missing:
        raise InputError(f"batch lacks column(s) {sorted(missing)}; pass a prediction log.")
    if batch.empty:
        raise InputError("batch is empty; there is nothing to judge.")
    if not SCORES[0] <= pass_at <= SCORES[-1]:
        raise InputError(f"pass_at={pass_at}: use a weighted score from 1 to 5, e.g. 3.5.")
    rows = []
    for row in bar(list(batch.itertuples()), desc="judge", disable=not progress):
        msgs = messages(row.text, row.predicted, row.answer)
        try:
            asked = structured.ask(
                model,
                msgs,
                JudgeScore,
                max_tokens=max_tokens,
                logprobs=True,
                top_logprobs=top_logprobs,
            )
        except ValueError as err:
            if "logits_all" in str(err):
                raise InputError(
                    "The judge reads token probabilities: load it with "
                    'session.model("chat", logits_all=True).'
                ) from err
            raise
        probs = score_distribution(asked.response) if asked.parsed.ok else None
        mass = sum(probs.values()) if probs else 0.0
        weighted = weighted_score(probs) if mass > 0 else math.nan
        rows.append(
            {
                "score": asked.parsed.value.score if asked.parsed.ok else None,
                "weighted": weighted,
                "mass": mass,
                **{f"p{s}": probs[s] / mass if mass > 0 else math.nan for s in SCORES},
                "passed": bool(weighted >= pass_at),  # NaN compares False: fail-closed
                "raw": asked.reply.strip(),
                "judge_ms": 1000 * asked.latency_s,
            }
        )
    return pd.DataFrame(rows, index=batch.index).astype({"score": "Int64"})


def choose_pass_at(weighted: pd.Series, correct: pd.Series, fallback: float | None = None) -> float:
    """The pass threshold on the weighted score that best separates right from wrong
    predictions on these rows (highest balanced accuracy: the mean of the pass rate on right
    ones and the fail rate on wrong ones; the lowest such threshold on ties).

    A small judge's weighted scores bunch together (all near 3, say), so a fixed 3.5 can fail
    everything; choose the threshold on calibration rows and report on others, as for the
    traffic light: chosen and reported on the same rows it flatters the judge. When the
    rows are all right or all wrong there is nothing to separate: `fallback` is returned if
    given (e.g. PASS_AT), else the call is refused.
    """
    values = pd.Series(weighted).to_numpy(float)
    truth = pd.Series(correct).astype(bool).to_numpy()
    if len(values) != len(truth) or len(values) == 0 or pd.isna(values).any():
        raise InputError("choose_pass_at needs one weighted score per row, none missing.")
    if len(set(truth)) < 2:
        if fallback is not None:
            return fallback
        raise InputError(
            "choose_pass_at needs right and wrong predictions among the rows; these are all "
            + ("right." if truth.all() else "wrong.")
        )
    levels = sorted(set(values))
    candidates = [(a + b) / 2 for a, b in zip(levels, levels[1:], strict=False)] or levels

    def balanced(threshold: float) -> float:
        passed = values >= threshold
        return (passed[truth].mean() + (~passed[~truth]).mean()) / 2

    return max(candidates, key=lambda t: (balanced(t), -t))


def agreement(passed: pd.Series, correct: pd.Series, scores: pd.Series | None = None) -> pd.Series:
    """How well the judge's pass/fail matches whether each prediction was really right.

    The 2 x 2 counts first (what kappa is computed from), then accuracy: share of rows where
    they agree; kappa (Cohen's): agreement beyond what two raters with these pass and right
    rates reach by chance, 0 = chance, 1 = perfect. When one side has one value only (a
    judge that passes everything) kappa is 0 by construction, and undefined (NaN) when both
    do: `kappa_note` says which, so a table never shows such a figure without a word.
    With `scores` (the weighted scores), auc: the chance that a right prediction scored higher
    than a wrong one (0.5 = no signal), which needs no pass threshold.
    """
    from sklearn.metrics import cohen_kappa_score, roc_auc_score

    if len(passed) != len(correct) or len(passed) == 0:
        raise InputError(
            f"agreement needs one judge verdict per prediction; got {len(passed)} verdicts "
            f"for {len(correct)} predictions."
        )
    if passed.isna().any() or correct.isna().any():
        raise InputError("agreement got missing (NaN) verdicts or truths; grade every row first.")
    passed, correct = passed.astype(bool).to_numpy(), correct.astype(bool).to_numpy()
    both_constant = len(set(passed)) == 1 and len(set(correct)) == 1
    result = {
        "rows": len(passed),
        "pass & right": int((passed & correct).sum()),
        "pass & wrong": int((passed & ~correct).sum()),
        "fail & right": int((~passed & correct).sum()),
        "fail & wrong": int((~passed & ~correct).sum()),
        "accuracy": (passed == correct).mean(),
        "kappa": float("nan") if both_constant else float(cohen_kappa_score(correct, passed)),
    }
    if scores is not None:
        values = pd.Series(scores).to_numpy(float)
        if len(values) != len(correct) or pd.isna(values).any():
            raise InputError("scores needs one weighted score per prediction, none missing.")
        result["auc"] = float("nan") if len(set(correct)) == 1 else roc_auc_score(correct, values)
    return pd.Series(result)


def kappa_note(result: pd.Series) -> str:
    """One sentence on `agreement`'s kappa: its value with the counts, and when one side is
    constant, that this is why (0 by construction, or undefined when both are)."""
    rows = int(result["rows"])
    passes = int(result["pass & right"] + result["pass & wrong"])
    rights = int(result["pass & right"] + result["fail & right"])
    agree = int(result["pass & right"] + result["fail & wrong"])
    counts = f"{passes} of {rows} passed, {rights} of {rows} really right, {agree} agree"
    constant = []
    if passes in (0, rows):
        constant.append("the judge " + ("passed" if passes else "failed") + " every prediction")
    if rights in (0, rows):
        constant.append("every prediction was " + ("right" if rights else "wrong"))
    if math.isnan(result["kappa"]):
        return f"kappa undefined: {' and '.join(constant)} ({counts})"
    if constant:
        return (
            f"kappa {result['kappa']:.2f} by construction: {constant[0]}, and a constant "
            f"rater agrees only by chance ({counts})"
        )
    return f"kappa {result['kappa']:.2f} ({counts})"
