"""Drift tests on samples drawn with a fixed seed: shifted batches are flagged, same ones not."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from llmops_lib.lessons.nb11 import drift


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


def test_psi_bins_keep_ten_reference_rows_each_and_noise_follows_the_sample_size():
    assert [drift.psi_bins(n) for n in (2, 25, 40, 99, 100, 5000)] == [2, 2, 4, 9, 10, 10]
    assert drift.psi_noise(40, 40, 10) == pytest.approx(0.45)
    assert drift.psi_noise(4000, 4000, 10) == pytest.approx(0.0045)
    with pytest.raises(ValueError):
        drift.psi_bins(1)


def test_psi_of_same_distribution_batches_sits_at_its_noise_level_not_above_025():
    # Why 10 fixed bins flagged a no-drift batch of 40 rows: sampling alone lifts PSI to
    # about (bins - 1) * (1/n + 1/m). With bins of 10+ reference rows the mean stays below
    # 0.25, and the noise formula predicts the mean within a third.
    rng = np.random.default_rng(4)
    draws = [(rng.normal(size=40), rng.normal(size=40)) for _ in range(200)]
    ten = np.mean([drift.psi(a, b, bins=10) for a, b in draws])
    default = np.mean([drift.psi(a, b) for a, b in draws])
    assert ten > 0.25 > default
    assert ten == pytest.approx(drift.psi_noise(40, 40, 10), rel=1 / 3)
    assert default == pytest.approx(drift.psi_noise(40, 40, drift.psi_bins(40)), rel=1 / 3)


def test_univariate_prints_the_psi_noise_level_beside_psi():
    rng = np.random.default_rng(5)
    table = drift.univariate(batch(rng, 40), batch(rng, 30))
    assert table.loc["input chars", "psi noise"] == pytest.approx(3 * (1 / 40 + 1 / 30))
    assert table.loc["lang", ["psi", "psi noise", "psi 95% if same"]].isna().all()
    level = table.loc["input chars", "psi 95% if same"]
    assert table.loc["input chars", "psi noise"] < level < 1


def test_the_no_drift_psi_level_comes_from_re_splits_and_a_real_shift_exceeds_it():
    rng = np.random.default_rng(6)
    ref, same, shifted = rng.normal(size=40), rng.normal(size=40), rng.normal(1.5, 1, 40)
    level = drift.psi_if_same(ref, same, permutations=300)
    draws = [drift.psi(rng.normal(size=40), rng.normal(size=40)) for _ in range(300)]
    assert np.mean(np.array(draws) > level) == pytest.approx(0.05, abs=0.04)
    assert drift.psi(ref, shifted) > drift.psi_if_same(ref, shifted)
    assert drift.psi_if_same(ref, same, seed=1) == drift.psi_if_same(ref, same, seed=1)


def test_psi_of_a_constant_reference_is_finite():
    assert drift.psi([1.0] * 20, [1.0] * 20) == pytest.approx(0)
    assert 0 < drift.psi([1.0] * 20, [1.0] * 10 + [2.0] * 10) < np.inf


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
