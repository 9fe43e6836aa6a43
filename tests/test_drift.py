"""Drift tests on samples drawn with a fixed seed: shifted batches are flagged, same ones not."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from llmops_lib import drift


def batch(rng: np.random.Generator, n: int, length: float = 120, german: float = 0.5):
    return pd.DataFrame(
        {
            "input chars": rng.normal(length, 25, n),
            "confidence": rng.beta(2, 2, n),
            "latency ms": rng.gamma(4, 3, n),
            "lang": rng.choice(["en", "de"], n, p=[1 - german, german]),
            "predicted": rng.choice(["positive", "negative"], n),
        }
    )


def test_features_come_from_a_log_without_labels():
    log = pd.DataFrame(
        {
            "text": ["abc", "abcdef"],
            "p_positive": [0.5, 1.0],
            "latency_ms": [3.0, 4.0],
            "lang": ["en", "de"],
            "predicted": ["positive", "positive"],
        }
    )
    table = drift.features(log)
    assert table["input chars"].tolist() == [3, 6]
    assert table["confidence"].tolist() == pytest.approx([0, 1])
    with pytest.raises(ValueError, match="empty"):
        drift.features(log.iloc[:0])


def test_a_shifted_batch_is_flagged_and_the_shifted_features_named():
    rng = np.random.default_rng(1)
    table = drift.univariate(batch(rng, 60), batch(rng, 60, length=300, german=0.9))
    assert table.loc["input chars", "drift"] and table.loc["lang", "drift"]
    assert table.loc["input chars", "psi"] > 0.25
    assert list(table["test"]) == ["KS"] * 3 + ["chi-squared"] * 2


def test_false_alarms_stay_near_alpha_and_shifts_are_found():
    rng = np.random.default_rng(2)
    pool = batch(rng, 200)
    same = drift.alarm_rate(pool, n=40, runs=40, seed=3)
    assert same["drift"].mean() <= 0.15
    shifted = drift.alarm_rate(pool, batch(rng, 100, length=200), n=40, runs=10, seed=3)
    assert shifted["drift"].mean() >= 0.9


def test_psi_is_zero_for_the_same_values_and_grows_with_the_shift():
    values = np.arange(100.0)
    assert drift.psi(values, values) == pytest.approx(0)
    assert 0 < drift.psi(values, values + 10) < drift.psi(values, values + 50)


def test_a_category_absent_from_one_batch_and_a_constant_one_are_handled():
    ref = pd.DataFrame({"lang": ["en"] * 10, "predicted": ["positive"] * 10})
    cur = pd.DataFrame({"lang": ["de"] * 10, "predicted": ["positive"] * 10})
    table = drift.univariate(ref, cur, continuous=())
    assert table.loc["lang", "drift"]
    assert table.loc["predicted", "p_value"] == 1.0 and not table.loc["predicted", "drift"]


@pytest.mark.parametrize(
    "current, match",
    [
        (pd.DataFrame({"x": [1.0]}), "1 value"),
        (pd.DataFrame({"x": [1.0, np.nan, 2.0]}), "NaN"),
    ],
)
def test_univariate_refuses_tiny_or_nan_batches(current, match):
    with pytest.raises(ValueError, match=match):
        drift.univariate(pd.DataFrame({"x": [1.0, 2.0, 3.0]}), current, ["x"], [])


def test_domain_classifier_tells_shifted_embeddings_apart_but_not_same_ones():
    rng = np.random.default_rng(4)
    ref, same = rng.normal(size=(40, 8)), rng.normal(size=(40, 8))
    shifted = rng.normal(size=(40, 8)) + np.r_[1.5, np.zeros(7)]
    found = drift.domain_classifier(ref, shifted, permutations=10)
    assert found["auc"] > 0.8 and found["p_value"] < 0.1
    not_found = drift.domain_classifier(ref, same, permutations=10)
    assert not_found["auc"] < 0.7 and not_found["p_value"] > 0.05
    with pytest.raises(ValueError, match="5\\+ embeddings"):
        drift.domain_classifier(ref[:3], shifted)
