"""The judge's prompt, its schema, its G-Eval score and its agreement, on fake engines (and
once on the tiny model)."""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest
from fakes import FakeChat, FakeSchemaChat

from llmops_lib.lessons import structured
from llmops_lib.lessons.nb08 import judge


class FakeJudge(FakeSchemaChat):
    """A constrained engine that also returns token log-probabilities, as llama-cpp-python
    does with logprobs=True: at the score's position, `dist` (a function of the call's
    index) gives the alternatives' probabilities."""

    def __init__(self, replies, dists, **kwargs):
        super().__init__(replies=replies, **kwargs)
        self.dists = list(dists)

    def chat(self, messages, max_tokens=256, temperature=0.0, stream=False, **options):
        reply = super().chat(
            messages, max_tokens, temperature, stream, options.pop("response_format", None)
        )
        self.calls[-1].update(options)
        text = reply["choices"][0]["message"]["content"]
        dist = self.dists[len(self.calls) - 1]
        content = []
        for piece in re.findall(r"\d|[^\d]+", text):
            alts = [{"token": t, "logprob": math.log(p)} for t, p in dist.items()]
            top = alts if piece.isdigit() else [{"token": piece, "logprob": -0.1}]
            content.append({"token": piece, "logprob": -0.1, "top_logprobs": top})
        reply["choices"][0]["logprobs"] = {"content": content}
        return reply


def test_the_reply_is_constrained_to_one_score_from_1_to_5():
    schema = judge.JudgeScore.model_json_schema()
    assert schema["properties"]["score"]["enum"] == [1, 2, 3, 4, 5]
    assert structured.parse(judge.JudgeScore, '{"score": 4}').value.score == 4
    for reply in ['{"score": 7}', '{"score": "4"}', "Score: 4", '{"score": 4, "why": "x"}']:
        assert not structured.parse(judge.JudgeScore, reply).ok


def test_the_weighted_score_is_the_mean_over_the_score_tokens():
    assert judge.weighted_score({1: 0.0, 2: 0.0, 3: 0.0, 4: 1.0, 5: 0.0}) == 4
    # renormalised over the five scores: the same shape at half the mass gives the same score
    assert judge.weighted_score({1: 0.1, 5: 0.3}) == pytest.approx((0.1 + 1.5) / 0.4)
    with pytest.raises(ValueError, match="no probability"):
        judge.weighted_score({1: 0.0, 5: 0.0})


def test_the_distribution_is_read_at_the_score_position_and_spellings_add_up():
    fake = FakeJudge(['{"score": 4}'], [{"4": 0.4, " 4": 0.1, "2": 0.2, "x": 0.3}])
    reply = fake.chat([{"role": "user", "content": "q"}], logprobs=True, top_logprobs=5)
    probs = judge.score_distribution(reply)
    assert probs == pytest.approx({1: 0, 2: 0.2, 3: 0, 4: 0.5, 5: 0})
    no_logprobs = FakeSchemaChat(['{"score": 4}']).chat([{"role": "user", "content": "q"}])
    with pytest.raises(ValueError, match="logprobs=True"):
        judge.score_distribution(no_logprobs)


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
        '{"score": N}',
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


def test_grade_constrains_weights_and_fails_closed():
    replies = ['{"score": 5}', '{"score": 2}', '{"score": 4', '{"score": 3}']
    dists = [{"5": 0.9, "4": 0.1}, {"2": 0.5, "1": 0.5}, {"4": 1.0}, {"3": 0.5, "5": 0.5}]
    fake = FakeJudge(replies, dists)
    graded = judge.grade(fake, BATCH, max_tokens=6, pass_at=3.5, progress=False)
    assert list(graded.index) == [7, 8, 9, 10]
    assert graded["score"].tolist() == [5, 2, pd.NA, 3]
    assert graded["weighted"].iloc[[0, 1, 3]].tolist() == pytest.approx([4.9, 1.5, 4.0])
    assert math.isnan(graded["weighted"].iloc[2])  # cut off: no verdict
    assert graded["passed"].tolist() == [True, False, False, True]
    assert graded[["p1", "p2", "p3", "p4", "p5"]].iloc[0].tolist() == pytest.approx(
        [0, 0, 0, 0.1, 0.9]
    )
    assert (graded["judge_ms"] >= 0).all()
    call = fake.calls[0]
    assert call["max_tokens"] == 6 and call["temperature"] == 0.0
    assert call["logprobs"] is True and call["top_logprobs"] == judge.TOP_LOGPROBS
    assert call["response_format"] == structured.response_format(judge.JudgeScore, "json_schema")
    assert "Justification: Yes, because." in call["messages"][1]["content"]


def test_grade_names_the_fix_when_the_engine_cannot_give_probabilities():
    class NoLogits(FakeSchemaChat):
        def chat(self, messages, max_tokens=256, temperature=0.0, stream=False, **options):
            raise ValueError("logprobs is not supported for models created with logits_all=False")

    with pytest.raises(ValueError, match="logits_all=True"):
        judge.grade(NoLogits(), BATCH, progress=False)


def test_grade_refuses_empty_or_malformed_batches():
    with pytest.raises(ValueError, match="empty"):
        judge.grade(FakeChat(), BATCH.iloc[:0], progress=False)
    with pytest.raises(ValueError, match="answer"):
        judge.grade(FakeChat(), BATCH.drop(columns="answer"), progress=False)


def test_agreement_counts_accuracy_kappa_and_auc():
    passed = pd.Series([True, True, False, False, True, False])
    correct = pd.Series([True, True, False, False, False, True])
    scores = pd.Series([5.0, 4.0, 1.0, 2.0, 4.5, 3.0])
    result = judge.agreement(passed, correct, scores)
    assert result[["pass & right", "pass & wrong", "fail & right", "fail & wrong"]].tolist() == [
        2,
        1,
        1,
        2,
    ]
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["kappa"] == pytest.approx(1 / 3)  # (4/6 - 1/2) / (1 - 1/2)
    assert result["auc"] == pytest.approx(7 / 9)  # 7 of the 9 right/wrong pairs ordered right
    assert judge.kappa_note(result).startswith("kappa 0.33 (3 of 6 passed, 3 of 6 really right")


def test_a_constant_side_is_named_beside_its_kappa_and_bad_input_is_refused():
    result = judge.agreement(pd.Series([False] * 3), pd.Series([True, False, True]))
    assert result["accuracy"] == pytest.approx(1 / 3) and result["kappa"] == 0
    assert "by construction: the judge failed every prediction" in judge.kappa_note(result)
    both = judge.agreement(pd.Series([True, True]), pd.Series([True, True]))
    assert math.isnan(both["kappa"])
    note = judge.kappa_note(both)
    assert "undefined" in note and "passed every" in note and "was right" in note
    with pytest.raises(ValueError, match="one judge verdict per prediction"):
        judge.agreement(pd.Series([], dtype=bool), pd.Series([], dtype=bool))
    with pytest.raises(ValueError, match="NaN"):
        judge.agreement(pd.Series([True, None]), pd.Series([True, False]))
    with pytest.raises(ValueError, match="one weighted score"):
        judge.agreement(pd.Series([True, False]), pd.Series([True, False]), pd.Series([1.0]))


def test_the_pass_threshold_is_chosen_where_it_separates_right_from_wrong():
    weighted = pd.Series([2.7, 2.8, 2.9, 3.0, 3.1, 3.2])
    correct = pd.Series([False, False, True, False, True, True])
    assert judge.choose_pass_at(weighted, correct) == pytest.approx(2.85)
    assert judge.choose_pass_at(weighted, ~correct) == pytest.approx(2.75)  # ties: the lowest
    with pytest.raises(ValueError, match="all right"):
        judge.choose_pass_at(weighted, pd.Series([True] * 6))
    assert judge.choose_pass_at(weighted, pd.Series([False] * 6), fallback=3.5) == 3.5


@pytest.mark.model
def test_the_tiny_judge_always_answers_in_schema_with_a_distribution(session, one_thread):
    model = session.model("chat", logits_all=True, n_ctx=1024, **one_thread)
    try:
        graded = judge.grade(
            model, BATCH.assign(text=["The lift is approved."] * 4), progress=False
        )
    finally:
        model.close()
    assert graded["score"].notna().all()
    assert graded["weighted"].between(1, 5).all()
    assert graded[["p1", "p2", "p3", "p4", "p5"]].sum(axis=1).to_numpy() == pytest.approx(1)
    assert (graded["mass"] > 0).all()
