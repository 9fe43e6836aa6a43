"""The judge's prompt, its fail-closed parsing and its agreement, on the fake chat model."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from fakes import FakeChat

from llmops_lib import judge


@pytest.mark.parametrize(
    "reply, score",
    [
        ("Score: 4", 4),
        ("score:5\nThe verdict matches.", 5),
        ("**Score: 2**", 2),
        ("3", 3),
        (" Score = 1", 1),
        ("Score: 7", None),  # out of range
        ("Score: 4/5", None),  # a fraction is not the format
        ("Score: 3.5", None),
        ("The verdict is right. Score: 5", None),  # not at the start: not the format
        ("", None),
        ("Yes", None),
    ],
)
def test_parse_score_is_fail_closed(reply, score):
    assert judge.parse_score(reply) == score


def test_prompt_spells_out_criteria_steps_and_the_case():
    msgs = judge.messages("Der Lifter wird befürwortet.", "negative", "  ")
    assert [m["role"] for m in msgs] == ["system", "user"]
    prompt = msgs[1]["content"]
    for part in (
        "Evaluation criteria",
        "Evaluation steps",
        "Der Lifter wird befürwortet.",
        "verdict: not recommended",
        "Justification: (none)",
        "Score: N",
    ):
        assert part in prompt
    with pytest.raises(ValueError, match="neutral"):
        judge.messages("text", "neutral")


BATCH = pd.DataFrame(
    {
        "text": ["a", "b", "c", "d"],
        "predicted": ["positive", "negative", "positive", "negative"],
        "answer": ["Yes, because.", "", "Yes.", "No."],
    },
    index=[7, 8, 9, 10],
)


def test_grade_asks_once_per_row_and_unparsed_replies_never_pass():
    fake = FakeChat(replies=["Score: 5", "Score: 2", "I think it is fine", "Score: 4"])
    graded = judge.grade(fake, BATCH, max_tokens=6, progress=False)
    assert list(graded.index) == [7, 8, 9, 10]
    assert graded["score"].tolist() == [5, 2, pd.NA, 4]
    assert graded["passed"].tolist() == [True, False, False, True]
    assert graded["raw"].iloc[2] == "I think it is fine"
    assert (graded["judge_ms"] >= 0).all()
    assert [c["max_tokens"] for c in fake.calls] == [6] * 4
    assert all(c["temperature"] == 0.0 for c in fake.calls)
    assert "Justification: Yes, because." in fake.calls[0]["messages"][1]["content"]


def test_grade_refuses_empty_or_malformed_batches():
    with pytest.raises(ValueError, match="empty"):
        judge.grade(FakeChat(), BATCH.iloc[:0], progress=False)
    with pytest.raises(ValueError, match="answer"):
        judge.grade(FakeChat(), BATCH.drop(columns="answer"), progress=False)


def test_agreement_accuracy_and_kappa():
    passed = pd.Series([True, True, False, False, True, False])
    correct = pd.Series([True, True, False, False, False, True])
    result = judge.agreement(passed, correct)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["kappa"] == pytest.approx(1 / 3)  # (4/6 - 1/2) / (1 - 1/2)


def test_agreement_kappa_is_undefined_for_one_class_and_bad_input_is_refused():
    result = judge.agreement(pd.Series([True, True]), pd.Series([True, False]))
    assert result["accuracy"] == 0.5 and math.isnan(result["kappa"])
    with pytest.raises(ValueError, match="one judge verdict per prediction"):
        judge.agreement(pd.Series([], dtype=bool), pd.Series([], dtype=bool))
    with pytest.raises(ValueError, match="NaN"):
        judge.agreement(pd.Series([True, None]), pd.Series([True, False]))
