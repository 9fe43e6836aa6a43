"""classify()'s decisions on the fake model: both methods, the threshold, the prompts sent.

The real classifier model (Yes/No probabilities from a forward pass) is tested in
test_classify.py; here the model's answers are set by hand, so every decision is known.
"""

from __future__ import annotations

import pandas as pd
import pytest
from fakes import FakeChat

from llmops_lib.core.errors import InputError
from llmops_lib.lessons import classify
from llmops_lib.lessons.classify import NEGATIVE, POSITIVE

DATA = pd.DataFrame(
    {
        "text": ["The aid is recommended.", "Not needed.", "Das Hilfsmittel ist nötig.", "Unklar."],
        "label": [POSITIVE, NEGATIVE, POSITIVE, NEGATIVE],
        "lang": ["en", "en", "de", "de"],
    }
)
# P(first token) per text: English answers start with Yes/No, German ones with Ja/Nein.
PROBS = {
    "The aid is recommended.": {"Yes": 0.6, "yes": 0.1, "No": 0.1},  # p_positive 0.875
    "Not needed.": {"Yes": 0.2, "No": 0.6},  # 0.25
    "Das Hilfsmittel ist nötig.": {"Ja": 0.3, "Nein": 0.2},  # 0.6
    "Unklar.": {"Ja": 0.36, "Nein": 0.44},  # 0.45
}
# What each reply continues with after the forced start ("Yes, because" ...).
REPLIES = {
    "The aid is recommended.": "the assessment recommends it.",
    "Not needed.": "it is not needed.",
    "Das Hilfsmittel ist nötig.": "es ist nötig.",
    "Unklar.": "keine Indikation.",
}
STARTS = ["Yes, because", "No, because", "Ja, denn", "Nein, denn"]  # greedy picks per text


def text_of(messages: list[dict[str, str]]) -> str:
    question = messages[-1]["content"]
    return next(text for text in PROBS if question.endswith(f": {text}"))


@pytest.fixture
def fake():
    return FakeChat(
        replies=lambda messages: REPLIES[text_of(messages)],
        token_probs=lambda messages: PROBS[text_of(messages)],
    )


def test_both_methods_decide_each_text(fake):
    df = classify.classify(fake, DATA, max_tokens=12, progress=False)
    assert df["truth"].tolist() == DATA["label"].tolist()
    assert df["p_positive"].tolist() == pytest.approx([0.875, 0.25, 0.6, 0.45])
    assert df["prediction_p"].tolist() == [POSITIVE, NEGATIVE, POSITIVE, NEGATIVE]
    # the forced start makes the likelier label the answer's first word, never neutral
    assert df["prediction"].tolist() == [POSITIVE, NEGATIVE, POSITIVE, NEGATIVE]
    assert df["explanation"].tolist() == [
        f"{start} {REPLIES[t]}" for start, t in zip(STARTS, DATA["text"], strict=True)
    ]
    assert (df["latency_s"] >= 0).all()
    # each text was asked greedily, in its own language, with its language's two starts
    for call, row in zip(fake.calls, DATA.itertuples(), strict=True):
        assert call["messages"] == classify.messages(row.text, row.lang)
        assert (call["max_tokens"], call["temperature"]) == (12, 0.0)
        assert call["starts"] == classify.answer_starts(row.lang)


def test_answer_starts_are_the_two_labels_of_the_language_then_a_reason():
    assert classify.answer_starts("en") == ["Yes, because", "No, because"]
    assert classify.answer_starts("de") == ["Ja, denn", "Nein, denn"]
    assert [classify.parse_answer(s) for s in classify.answer_starts("de")] == [POSITIVE, NEGATIVE]
    with pytest.raises(InputError, match="fr"):
        classify.answer_starts("fr")


def test_the_threshold_moves_only_the_probability_decision(fake):
    df = classify.classify(fake, DATA, threshold=0.7, progress=False)
    assert df["prediction_p"].tolist() == [POSITIVE, NEGATIVE, NEGATIVE, NEGATIVE]
    assert df["prediction"].tolist() == [POSITIVE, NEGATIVE, POSITIVE, NEGATIVE]


def test_without_generation_the_model_is_never_asked_to_chat(fake):
    df = classify.classify(fake, DATA, generate=False, progress=False)
    assert fake.calls == []
    assert df["prediction"].tolist() == [""] * 4 and df["explanation"].tolist() == [""] * 4
    assert df["prediction_p"].tolist() == [POSITIVE, NEGATIVE, POSITIVE, NEGATIVE]


def test_examples_of_the_texts_language_go_into_the_prompt(fake):
    examples = {
        "de": pd.DataFrame({"text": ["Empfohlen.", "Abgelehnt."], "label": [POSITIVE, NEGATIVE]})
    }
    classify.classify(fake, DATA, examples=examples, progress=False)
    sent = [call["messages"] for call in fake.calls]
    assert sent[0] == classify.messages(DATA["text"][0], "en")  # no English examples
    assert sent[2] == classify.messages(DATA["text"][2], "de", examples["de"])
    assert [m["content"] for m in sent[2][2:5:2]] == ["Ja.", "Nein."]


def test_p_positive_is_the_share_of_yes_and_refuses_when_both_are_zero():
    messages = classify.messages("x", "en")
    assert classify.p_positive(
        FakeChat(token_probs={"Yes": 0.3, "No": 0.1}), messages
    ) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="zero probability"):
        classify.p_positive(FakeChat(token_probs={"Maybe": 0.9}), messages)


def test_the_published_l4_table_is_cited_and_never_mixed_with_a_measurement():
    from llmops_lib.lessons.nb02 import precision_sweep

    table = precision_sweep.published_l4()
    assert table.index.tolist() == ["bf16", "int8", "nf4"]
    assert table["right of 10"].between(0, 10).all()
    # quantization bought memory: each smaller precision holds less on the GPU
    assert table["GPU MiB after load"].is_monotonic_decreasing
    assert set(table["source"]) == {precision_sweep.WORKSHOP}
    assert table["notebook"].str.endswith(".ipynb").all()
