"""An LLM as a judge of the assessment classifier's predictions, G-Eval style.

G-Eval (Liu et al., 2023) writes the grading out for the judge: the task, the criteria, the
steps to follow, then a score on a fixed scale. Here the judge reads an assessment, the
verdict a classifier gave and its justification, and scores 1 to 5 how likely the verdict
is right. The reply is parsed fail-closed: anything but one clear score in range counts as
"no verdict", which never passes, because a judge that did not answer certifies nothing.

Measure the judge before trusting it: `agreement` compares its pass/fail with the ground
truth (accuracy, Cohen's kappa), and `grade` times every call.
"""

from __future__ import annotations

import re
import time

import pandas as pd
from tqdm import tqdm

from .backend import ChatBackend, reply_text
from .classify import NEGATIVE, POSITIVE

SCORES = range(1, 6)
PASS_FROM = 4  # a score of 4 or 5 passes: the judge believes the verdict is right

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

Reply with one line, exactly in the form "Score: N"."""

_SCORE = re.compile(r"^\W*(?:score\s*[:=]?\s*)?(\d+)\b(?!\s*[./,]\s*\d)", re.IGNORECASE)


def messages(text: str, predicted: str, justification: str = "") -> list[dict[str, str]]:
    """The judge's prompt for one prediction: criteria, steps, the case, the answer format."""
    verdicts = {POSITIVE: "recommended", NEGATIVE: "not recommended"}
    if predicted not in verdicts:
        raise ValueError(
            f"predicted={predicted!r}: the judge grades {POSITIVE!r} or {NEGATIVE!r} verdicts."
        )
    prompt = PROMPT.format(
        text=text, verdict=verdicts[predicted], justification=justification.strip() or "(none)"
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]


def parse_score(reply: str) -> int | None:
    """The score 1-5 at the start of the reply ("Score: 4", "4", "**Score: 4**"), else None.

    Fail-closed: an empty reply, another number ("Score: 7"), a fraction ("4/5", "3.5") or
    any other text gives None, never a guess.
    """
    match = _SCORE.match(reply.strip())
    if not match:
        return None
    score = int(match.group(1))
    return score if score in SCORES else None


def grade(
    model: ChatBackend,
    batch: pd.DataFrame,
    max_tokens: int = 8,
    pass_from: int = PASS_FROM,
    progress: bool = True,
) -> pd.DataFrame:
    """Ask the judge about every row of `batch` (columns text, predicted, answer).

    Returns score (None when unparsed), passed (score >= pass_from; False when unparsed),
    the raw reply and judge_ms, the wall time of the call.
    """
    missing = {"text", "predicted", "answer"} - set(batch.columns)
    if missing:
        raise ValueError(f"batch lacks column(s) {sorted(missing)}; pass a prediction log.")
    if batch.empty:
        raise ValueError("batch is empty; there is nothing to judge.")
    if pass_from not in SCORES:
        raise ValueError(f"pass_from={pass_from}: use a score from 1 to 5.")
    rows = []
    for row in tqdm(list(batch.itertuples()), desc="judge", disable=not progress):
        msgs = messages(row.text, row.predicted, row.answer)
        start = time.perf_counter()
        raw = reply_text(model.chat(msgs, max_tokens=max_tokens, temperature=0.0))
        ms = (time.perf_counter() - start) * 1000
        score = parse_score(raw)
        rows.append(
            {
                "score": score,
                "passed": score is not None and score >= pass_from,
                "raw": raw.strip(),
                "judge_ms": ms,
            }
        )
    return pd.DataFrame(rows, index=batch.index).astype({"score": "Int64"})


def agreement(passed: pd.Series, correct: pd.Series) -> pd.Series:
    """How well the judge's pass/fail matches whether each prediction was really right.

    accuracy: share of rows where they agree. kappa (Cohen's): agreement beyond what two
    raters with these pass and correct rates reach by chance; 0 = chance, 1 = perfect. It is
    undefined (NaN) when the judge or the truth has one value only: say so, don't hide it.
    """
    from sklearn.metrics import cohen_kappa_score

    if len(passed) != len(correct) or len(passed) == 0:
        raise ValueError(
            f"agreement needs one judge verdict per prediction; got {len(passed)} verdicts "
            f"for {len(correct)} predictions."
        )
    if passed.isna().any() or correct.isna().any():
        raise ValueError("agreement got missing (NaN) verdicts or truths; grade every row first.")
    passed, correct = passed.astype(bool).to_numpy(), correct.astype(bool).to_numpy()
    constant = len(set(passed)) == 1 or len(set(correct)) == 1
    return pd.Series(
        {
            "rows": len(passed),
            "judge passes": passed.mean(),
            "really right": correct.mean(),
            "accuracy": (passed == correct).mean(),
            "kappa": float("nan") if constant else cohen_kappa_score(correct, passed),
        }
    )
