"""Assessment classification: answer parser, Yes/No probabilities, calibration, scoring."""

from __future__ import annotations

import matplotlib
import pandas as pd
import pytest

from llmops_lib.core.datasets import load_assessments
from llmops_lib.core.errors import InputError
from llmops_lib.lessons import classify, scoring
from llmops_lib.lessons.classify import NEGATIVE, NEUTRAL, POSITIVE


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("Yes, the rollator is recommended.", POSITIVE),
        ("  yes", POSITIVE),
        ("\n**YES.** The aid is necessary.", POSITIVE),
        ("Ja, das Hilfsmittel wird empfohlen.", POSITIVE),
        ("ja!", POSITIVE),
        ("No. The findings do not support it.", NEGATIVE),
        ("NEIN - keine Indikation.", NEGATIVE),
        ("\t- nein", NEGATIVE),
        ('"No"', NEGATIVE),
        ("Not recommended.", NEUTRAL),  # "Not" is not "No"
        ("Nobody knows.", NEUTRAL),
        ("Janein.", NEUTRAL),
        ("The assessment is positive.", NEUTRAL),
        ("", NEUTRAL),
    ],
)
def test_parse_answer(answer, label):
    assert classify.parse_answer(answer) == label


def test_messages_put_examples_before_the_question():
    examples = pd.DataFrame({"text": ["A.", "B."], "label": [POSITIVE, NEGATIVE]})
    msgs = classify.messages("C.", "de", examples)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [msgs[2]["content"], msgs[4]["content"]] == ["Ja.", "Nein."]
    assert msgs[-1]["content"].endswith("Gutachten: C.")
    with pytest.raises(ValueError, match="en, de"):
        classify.messages("C.", "fr")


def test_calibrated_threshold_separates_separable_scores():
    p = pd.Series([0.2, 0.3, 0.35, 0.6, 0.7])
    truth = pd.Series([NEGATIVE, NEGATIVE, POSITIVE, POSITIVE, POSITIVE])
    t = scoring.calibrate_threshold(p, truth)
    assert 0.3 < t <= 0.35
    assert ((p >= t) == (truth == POSITIVE)).all()


def test_calibrated_threshold_stays_at_half_when_nothing_is_gained():
    p = pd.Series([0.9, 0.1])
    truth = pd.Series([POSITIVE, NEGATIVE])
    assert scoring.calibrate_threshold(p, truth) == 0.5


@pytest.fixture(scope="module")
def tiny(tiny_hf):
    """The tiny profile's classifier (SmolLM2 135M Instruct, fp32), shared (conftest)."""
    return tiny_hf


@pytest.mark.model
def test_yes_no_probabilities_are_probabilities(tiny):
    for row in load_assessments().groupby("lang").head(2).itertuples():
        msgs = classify.messages(row.text, row.lang)
        probs = tiny.next_token_probs(msgs, classify.SPELLINGS)
        assert 0 < probs[POSITIVE] + probs[NEGATIVE] <= 1
        p = classify.p_positive(tiny, msgs)
        assert 0 <= p <= 1
        p_negative = probs[NEGATIVE] / (probs[POSITIVE] + probs[NEGATIVE])
        # p's call reuses the cached prompt: the same sums, computed in another order
        assert p + p_negative == pytest.approx(1, abs=1e-5)


@pytest.mark.model
def test_groups_sharing_a_first_token_are_rejected(tiny):
    msgs = classify.messages("x", "en")
    with pytest.raises(ValueError, match="same token"):
        tiny.next_token_probs(msgs, {"a": ["Yes"], "b": ["Yes"]})


@pytest.mark.model
def test_classify_returns_the_results_table(tiny):
    data = load_assessments("en").head(2)
    df = classify.classify(tiny, data, max_tokens=6, progress=False)
    assert list(df.columns) == [
        "text",
        "lang",
        "truth",
        "p_positive",
        "prediction_p",
        "prediction",
        "explanation",
        "latency_s",
    ]
    assert df["truth"].tolist() == data["label"].tolist()
    assert set(df["prediction"]) <= {POSITIVE, NEGATIVE, NEUTRAL}
    assert (
        df["prediction_p"] == df["p_positive"].ge(0.5).map({True: POSITIVE, False: NEGATIVE})
    ).all()
    assert set(scoring.confusion(df, "prediction_p").index) == {POSITIVE, NEGATIVE}
    assert 0 <= scoring.accuracy(df, "prediction_p") <= 1


def test_confusion_plots_write_each_count_in_its_cell():
    scored = pd.DataFrame(
        {
            "truth": [POSITIVE, POSITIVE, NEGATIVE, NEGATIVE, NEGATIVE],
            "prediction": [POSITIVE, NEUTRAL, NEGATIVE, POSITIVE, NEGATIVE],
            "prediction_p": [POSITIVE, POSITIVE, NEGATIVE, NEGATIVE, POSITIVE],
        }
    )
    fig = scoring.plot_confusions(scored, {"prediction": "parsed", "prediction_p": "P(Yes)"})
    assert [ax.get_title() for ax in fig.axes] == ["parsed", "P(Yes)"]
    for ax, column in zip(fig.axes, ("prediction", "prediction_p"), strict=True):
        matrix = scoring.confusion(scored, column)
        written = {
            (round(t.get_position()[1]), round(t.get_position()[0])): int(t.get_text())
            for t in ax.texts
        }
        assert written == {
            (i, j): int(matrix.iat[i, j])
            for i in range(matrix.shape[0])
            for j in range(matrix.shape[1])
        }
        assert [t.get_text() for t in ax.get_xticklabels()] == list(matrix.columns)


@pytest.mark.model
def test_p_yes_written_out_with_transformers_matches_the_library(session, tiny):
    """Notebook 02's raw cell: from_pretrained, logits -> softmax -> P(Yes), by hand."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    row = load_assessments("de").iloc[0]
    msgs = classify.messages(row.text, row.lang)
    folder = session.model_path("classifier")
    tok = AutoTokenizer.from_pretrained(folder)
    raw = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, device_map="cpu")
    prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.inference_mode():
        probs = torch.softmax(raw(input_ids=ids).logits[0, -1].float(), dim=-1)

    def first_tokens(words: list[str]) -> list[int]:
        return sorted({tok(w, add_special_tokens=False).input_ids[0] for w in words})

    p_yes = float(probs[first_tokens(classify.SPELLINGS[POSITIVE])].sum())
    p_no = float(probs[first_tokens(classify.SPELLINGS[NEGATIVE])].sum())
    assert prompt == tiny.prompt_text(msgs)
    assert p_yes / (p_yes + p_no) == pytest.approx(classify.p_positive(tiny, msgs), abs=1e-4)


def test_accuracy_interval_holds_the_accuracy_and_narrows_with_more_texts():
    def scored(right: int, n: int) -> pd.DataFrame:
        return pd.DataFrame(
            {"truth": [POSITIVE] * n, "prediction": [POSITIVE] * right + [NEGATIVE] * (n - right)}
        )

    low, high = scoring.accuracy_interval(scored(6, 8))
    assert low < 6 / 8 < high
    low_many, high_many = scoring.accuracy_interval(scored(60, 80))
    assert high_many - low_many < high - low
    with pytest.raises(ValueError, match="confidence"):
        scoring.accuracy_interval(scored(6, 8), confidence=95)


def test_confusion_plot_reads_when_every_count_is_equal():
    # 02's stored run: four of each cell drew white counts on white cells (panel a blank)
    scored = pd.DataFrame(
        {"truth": [POSITIVE, POSITIVE, NEGATIVE, NEGATIVE], "prediction": [POSITIVE, NEGATIVE] * 2}
    )
    (ax,) = scoring.plot_confusions(scored, {"prediction": "parsed"}).axes
    image = ax.get_images()[0]
    assert image.norm.vmin == 0  # the scale starts at zero, so a count of 1 is a coloured cell
    cell = image.cmap(image.norm(1))
    for text in ax.texts:  # black on a light cell, white on a dark one: never the cell's colour
        ink = matplotlib.colors.to_rgba(text.get_color())
        assert sum(abs(a - b) for a, b in zip(ink[:3], cell[:3], strict=True)) > 1


@pytest.mark.model
def test_chat_starting_forces_a_label_then_lets_the_model_write_the_reason(tiny):
    msgs = classify.messages(load_assessments("de")["text"].iloc[0], "de")
    starts = classify.answer_starts("de")
    reply = tiny.chat_starting(msgs, starts, max_tokens=12)
    text = reply["choices"][0]["message"]["content"]
    assert any(text.startswith(start) for start in starts)
    assert len(text) > max(map(len, starts))  # free text after the forced start
    probs = tiny.next_token_probs(msgs, {"yes": ["Ja"], "no": ["Nein"]})
    assert text.startswith("Ja" if probs["yes"] >= probs["no"] else "Nein")  # greedy label
    with pytest.raises(InputError, match="starts"):
        tiny.chat_starting(msgs, [], max_tokens=4)


def test_accuracy_table_counts_texts_and_names_what_each_accuracy_reads():
    scored = pd.DataFrame(
        {
            "lang": ["en", "en", "de", "de"],
            "truth": [POSITIVE, NEGATIVE, POSITIVE, NEGATIVE],
            "prediction": [POSITIVE, POSITIVE, NEUTRAL, NEGATIVE],
            "p_positive": [0.9, 0.3, 0.6, 0.55],
        }
    )
    table = scoring.accuracy_table(scored, 0.58)
    assert table["texts"].tolist() == [2, 2, 4] and table["texts"].dtype.kind == "i"
    assert table.loc["all", "forced answer"] == 0.5  # the neutral answer counts as wrong
    assert table.loc["de", "neutral answers"] == 0.5
    assert table.loc["all", "P(Yes) >= 0.5"] == 0.75  # 0.55 is called positive
    assert table.loc["all", "P(Yes) >= 0.580"] == 1.0


def test_each_language_gets_its_own_threshold_when_their_scores_sit_apart():
    # English scores low, German high, each separable on its own: one threshold cannot
    # separate both, one per language does
    calibration = pd.DataFrame(
        {
            "lang": ["en"] * 4 + ["de"] * 4,
            "truth": [NEGATIVE, NEGATIVE, POSITIVE, POSITIVE] * 2,
            "p_positive": [0.08, 0.10, 0.20, 0.25, 0.60, 0.65, 0.85, 0.90],
        }
    )
    per_language = scoring.thresholds_by_language(calibration)
    assert 0.10 < per_language["en"] <= 0.20 and 0.65 < per_language["de"] <= 0.85
    scored = calibration.assign(prediction=POSITIVE)
    single = scoring.calibrate_threshold(calibration["p_positive"], calibration["truth"])
    table = scoring.accuracy_table(scored, single, per_language)
    assert table.loc["all", "P(Yes) >= its language's"] == 1.0
    assert table.loc["all", f"P(Yes) >= {single:.3f}"] < 1.0
    with pytest.raises(InputError, match=r"no threshold for \['de'\]"):
        scoring.accuracy_table(scored, single, {"en": per_language["en"]})
