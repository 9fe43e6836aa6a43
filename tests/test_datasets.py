"""The synthetic assessment dataset and its few-shot splits."""

from __future__ import annotations

import pytest

from llmops_lib.core.datasets import (
    LABELS,
    LANGS,
    SETS,
    load_assessments,
    load_new_traffic,
    split,
)
from llmops_lib.lessons.scoring import plot_confusion, score


def test_dataset_shape_and_balance():
    df = load_assessments()
    assert list(df.columns) == ["text", "label", "lang", "set"]
    assert set(df["label"]) == set(LABELS)
    assert set(df["lang"]) == set(LANGS)
    assert set(df["set"]) == set(SETS)
    assert df["text"].str.strip().str.len().gt(20).all()
    assert not df["text"].duplicated().any()
    counts = df.groupby(["lang", "set", "label"]).size()
    for lang in LANGS:
        assert counts[(lang, "fewshot", "positive")] == counts[(lang, "fewshot", "negative")] == 5
        n_pos, n_neg = counts[(lang, "eval", "positive")], counts[(lang, "eval", "negative")]
        assert n_pos == n_neg and n_pos + n_neg >= 30


def test_load_one_language():
    de = load_assessments("de")
    assert set(de["lang"]) == {"de"} and len(de) == (load_assessments()["lang"] == "de").sum()
    with pytest.raises(ValueError, match="'fr'"):
        load_assessments("fr")


@pytest.mark.parametrize("k", [1, 3, 5])
def test_split_is_deterministic_disjoint_and_balanced(k):
    df = load_assessments()
    train, test = split(df, k, seed=7)
    again_train, again_test = split(load_assessments(), k, seed=7)
    assert list(train.index) == list(again_train.index)
    assert list(test.index) == list(again_test.index)
    assert not set(train.index) & set(test.index)
    assert not set(train["text"]) & set(test["text"])
    assert (train.groupby(["lang", "label"]).size() == k).all()
    assert len(train.groupby(["lang", "label"])) == len(LANGS) * len(LABELS)
    assert set(test["set"]) == {"eval"} and set(train["set"]) == {"fewshot"}


def test_seed_changes_train_but_not_test():
    df = load_assessments()
    train0, test0 = split(df, 2, seed=0)
    train1, test1 = split(df, 2, seed=1)
    assert set(train0.index) != set(train1.index)
    assert list(test0.index) == list(test1.index)


def test_split_of_one_language():
    train, test = split(load_assessments("en"), 3, seed=0)
    assert set(train["lang"]) == set(test["lang"]) == {"en"}
    assert len(train) == 6


@pytest.mark.parametrize("k", [0, 6])
def test_split_rejects_impossible_k(k):
    with pytest.raises(ValueError, match=f"k_per_class={k}"):
        split(load_assessments(), k, seed=0)


def test_split_rejects_a_frame_without_eval_rows():
    train, _ = split(load_assessments(), 3, seed=0)
    with pytest.raises(ValueError, match="fewshot' and 'eval'"):
        split(train, 2, seed=0)


def test_score_per_language():
    _, test = split(load_assessments(), 1, seed=0)
    table = score(test, list(test["label"]))
    assert list(table.index) == [*LANGS, "all"]
    assert (table["accuracy"] == 1.0).all() and (table["f1"] == 1.0).all()
    flipped = ["negative" if y == "positive" else "positive" for y in test["label"]]
    assert (score(test, flipped)["accuracy"] == 0.0).all()
    with pytest.raises(ValueError, match="predictions"):
        score(test, ["positive"])


def test_new_traffic_differs_from_the_assessments_on_purpose():
    old, new = load_assessments(), load_new_traffic()
    assert list(new.columns) == list(old.columns) and set(new["set"]) == {"new"}
    assert set(new["label"]) == set(LABELS) and not set(new["text"]) & set(old["text"])
    assert (new["lang"] == "de").mean() > 0.6 > (old["lang"] == "de").mean()
    assert new["text"].str.len().min() > old["text"].str.len().max()


def test_the_confusion_plot_has_one_matrix_per_language_with_the_counts():
    test = load_assessments().head(40)
    predicted = ["positive"] * len(test)  # everything positive: the negatives all land wrong
    fig = plot_confusion(test, predicted, title="all positive")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [f"all positive {lang}" for lang in dict.fromkeys(test["lang"])]
    for ax, (_, part) in zip(fig.axes, test.groupby("lang", sort=False), strict=True):
        written = sorted(int(t.get_text()) for t in ax.texts)
        negatives = int((part["label"] == "negative").sum())
        assert written == sorted([len(part) - negatives, 0, negatives, 0])
