"""Traffic light, offline evaluation and ground-truth arithmetic on hand-made numbers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from llmops_lib.lessons import scoring
from llmops_lib.lessons.nb08 import evaluation
from llmops_lib.lessons.nb08.evaluation import TrafficLight


def test_confidence_is_the_scaled_distance_from_the_threshold():
    assert evaluation.confidence([0.5, 1.0, 0.0, 0.75]) == pytest.approx([0, 1, 1, 0.5])
    # a calibrated threshold of 0.8: 0.9 is halfway to certain, 0.4 halfway down
    assert evaluation.confidence([0.9, 0.4, 0.8], threshold=0.8) == pytest.approx([0.5, 0.5, 0])


@pytest.mark.parametrize(
    "p, match",
    [([], "empty"), ([0.2, math.nan], "NaN"), ([1.2], r"\[0, 1\]")],
)
def test_confidence_refuses_bad_probabilities(p, match):
    with pytest.raises(ValueError, match=match):
        evaluation.confidence(p)


def test_thresholds_put_the_sure_right_in_green_and_the_coin_flips_in_red():
    conf = np.array([0.05, 0.1, 0.15, 0.2, 0.4, 0.5, 0.6, 0.8, 0.9, 0.95])
    correct = np.array([False, True, False, True, True, False, True, True, True, True])
    light = evaluation.choose_thresholds(conf, correct, green_accuracy=0.9, red_accuracy=0.6)
    assert light == TrafficLight(red_below=0.2, green_from=0.6)
    colours = light.colours(conf)
    assert colours.tolist() == ["red"] * 3 + ["yellow"] * 3 + ["green"] * 4
    report = evaluation.light_report(colours, correct)
    assert report.loc["green", "accuracy"] == 1.0 and report.loc["red", "rows"] == 3
    assert report["share"].sum() == pytest.approx(1.0)


def test_an_unreachable_target_leaves_green_empty_rather_than_pretending():
    conf = np.linspace(0, 1, 10)
    correct = np.array([True, False] * 5)  # as good as a coin at every confidence
    light = evaluation.choose_thresholds(conf, correct, green_accuracy=0.9)
    assert light.green_from == math.inf
    report = evaluation.light_report(light.colours(conf), correct)
    assert report.loc["green", "rows"] == 0 and math.isnan(report.loc["green", "accuracy"])


def test_without_wrong_rows_nothing_is_red_and_without_right_rows_nothing_green():
    conf = [0.1, 0.2, 0.3, 0.4]
    assert evaluation.choose_thresholds(conf, [True] * 4) == TrafficLight(0.1, 0.1)
    all_wrong = evaluation.choose_thresholds(conf, [False] * 4)
    assert all_wrong.colours(conf).tolist() == ["red"] * 4
    with pytest.raises(ValueError, match="min_rows=3"):
        evaluation.choose_thresholds(conf[:2], [True, False])


def test_thresholds_refuse_mismatched_or_non_boolean_flags():
    with pytest.raises(ValueError, match="3 correct flags for 2"):
        evaluation.choose_thresholds([0.1, 0.2], [True, False, True])
    with pytest.raises(ValueError, match="True/False"):
        evaluation.choose_thresholds([0.1, 0.2], [1, 0])


def test_coverage_curve_shows_ties_together_and_ends_at_full_coverage():
    curve = evaluation.coverage_curve([0.9, 0.9, 0.5, 0.1], [True, False, True, False])
    assert curve["coverage"].tolist() == [0.5, 0.75, 1.0]
    assert curve["accuracy"].tolist() == pytest.approx([0.5, 2 / 3, 0.5])
    assert curve["threshold"].tolist() == [0.9, 0.5, 0.1]


def test_user_view_hides_the_verdict_on_red():
    view = evaluation.user_view(
        ["a", "b", "c"], ["positive", "negative", "positive"], ["green", "yellow", "red"]
    )
    shown = view["shown to the user"].tolist()
    assert "aid recommended" in shown[0] and "check" in shown[1] and "not recommended" in shown[1]
    assert "recommended" not in shown[2]


class ScriptedClassifier:
    """Stands in for the SetFit classifier: P(positive) read from the text."""

    def __init__(self, p: dict[str, float]):
        self.p, self.calls = p, 0

    def predict_proba(self, texts):
        self.calls += 1
        return pd.DataFrame(
            {"negative": [1 - self.p[t] for t in texts], "positive": [self.p[t] for t in texts]}
        )


ROWS = pd.DataFrame(
    {
        "text": ["yes", "no", "ja"],
        "label": ["positive", "negative", "negative"],
        "lang": ["en", "en", "de"],
    },
    index=[10, 11, 12],
)


def test_log_predictions_times_one_text_at_a_time_after_a_warm_up():
    clf = ScriptedClassifier({"yes": 0.9, "no": 0.2, "ja": 0.7})
    log = evaluation.log_predictions(clf, ROWS, "setfit")
    assert clf.calls == 1 + len(ROWS)
    assert list(log.columns) == evaluation.LOG_COLUMNS and list(log.index) == [10, 11, 12]
    assert log["predicted"].tolist() == ["positive", "negative", "positive"]
    assert (log["latency_ms"] >= 0).all() and (log["answer"] == "").all()
    with pytest.raises(ValueError, match="empty"):
        evaluation.log_predictions(clf, ROWS.iloc[:0], "setfit")


def test_log_from_classify_decides_at_the_given_threshold_and_keeps_the_answer():
    scored = pd.DataFrame(
        {"text": ["t", "u"], "lang": ["de", "en"], "truth": ["positive", "negative"],
         "p_positive": [0.7, 0.9], "prediction_p": ["positive", "positive"],
         "prediction": ["positive", "neutral"], "explanation": ["Ja, weil.", ""],
         "latency_s": [1.5, 2.0]}
    )  # fmt: skip
    log = evaluation.log_from_classify(scored, "llm", threshold=0.8)
    assert log.iloc[0].to_dict() == {
        "model": "llm", "text": "t", "lang": "de", "truth": "positive", "predicted": "negative",
        "p_positive": 0.7, "latency_ms": 1500.0, "answer": "Ja, weil.",
    }  # fmt: skip
    assert log["predicted"].tolist() == ["negative", "positive"]
    with pytest.raises(ValueError, match="empty"):
        evaluation.log_from_classify(scored.iloc[:0], "llm", threshold=0.5)


def test_answer_lengths_count_chars_words_and_bullets():
    lengths = evaluation.answer_lengths(["Yes.", "", "No:\n- too old\n* cheaper\n2. unused"])
    assert lengths.to_dict("list") == {
        "chars": [4, 0, 33],
        "words": [1, 0, 8],
        "bullets": [0, 0, 3],
    }


def test_summary_per_model_language_and_class():
    log = evaluation.log_predictions(
        ScriptedClassifier({"yes": 0.9, "no": 0.2, "ja": 0.7}), ROWS, "setfit"
    )
    table = evaluation.summary(log)
    row = table.loc["setfit"]
    assert row["rows"] == 3 and row["accuracy"] == pytest.approx(2 / 3)
    assert row["accuracy en"] == 1.0 and row["accuracy de"] == 0.0
    assert row["accuracy negative"] == 0.5 and row["accuracy positive"] == 1.0
    assert row["p50 ms"] <= row["p90 ms"] <= row["p99 ms"]
    with pytest.raises(ValueError, match="empty"):
        evaluation.summary(log.iloc[:0])
    with pytest.raises(ValueError, match="NaN"):
        evaluation.summary(log.assign(p_positive=[0.5, math.nan, 0.1]))


def test_latency_table_counts_and_percentiles_per_step():
    table = evaluation.latency_table({"fast": [10, 20, 30, 40, 50], "judge": [100.0]})
    assert table.loc["fast"].to_dict() == {"count": 5, "p50 ms": 30.0, "p90 ms": 46.0}
    assert table.loc["judge", "p90 ms"] == 100.0
    with pytest.raises(ValueError, match="No latencies"):
        evaluation.latency_table({"none": []})


def test_wilson_interval_known_values_and_edges():
    low, high = scoring.wilson(8, 10)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    low, high = scoring.wilson(10, 10)  # all right: still an interval, not a point
    assert high == pytest.approx(1.0) and low < 0.8
    with pytest.raises(ValueError, match="n >= 1"):
        scoring.wilson(0, 0)


def test_labelling_plan_more_labels_narrow_the_interval():
    plan = evaluation.labelling_plan(500, [0.01, 0.1, 0.5], accuracy=0.8, minutes_per_label=3)
    assert plan["labels/week"].tolist() == [5, 50, 250]
    assert plan["hours/week"].tolist() == pytest.approx([0.25, 2.5, 12.5])
    widths = plan["±CI after 1 wk"]
    assert widths.is_monotonic_decreasing and (plan["±CI after 4 wk"] < widths).all()
    with pytest.raises(ValueError, match="rate"):
        evaluation.labelling_plan(500, [0], accuracy=0.8, minutes_per_label=3)


def test_simulated_weeks_cover_the_true_accuracy_most_of_the_time():
    correct = np.array([True] * 8 + [False] * 2)
    weeks = evaluation.simulate_sampling(correct, volume_per_week=1000, rate=0.05, weeks=40)
    assert (weeks["labels"] > 20).all()
    inside = (weeks["low"] <= 0.8) & (0.8 <= weeks["high"])
    assert inside.mean() >= 0.85  # a 95 % interval
