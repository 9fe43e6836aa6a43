"""The wrap-up reads the newest results file of each kind, and says what is missing; the
course map reads each notebook's stored run time. Synthetic files, milliseconds."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from llmops_lib.core import course, results
from llmops_lib.lessons.nb99 import wrapup


def write_csv(folder, name, rows):
    pd.DataFrame(rows).to_csv(folder / name, index=False)


def audit_line(input_guard, ms):
    return json.dumps({"input_guard": input_guard, "ms": ms}) + "\n"


@pytest.fixture
def full(tmp_path):
    """One file of every kind, plus older and look-alike files that must be ignored."""
    write_csv(
        tmp_path,
        "01-setfit-k-sweep-20260101-000000.csv",
        [{"k": 2, "accuracy all": 0.1, "test texts": 10}],
    )
    write_csv(
        tmp_path,
        "01-setfit-k-sweep-20260102-000000.csv",
        [
            {"k": 2, "accuracy all": 0.6, "test texts": 80},
            {"k": 5, "accuracy all": 0.8, "test texts": 80},
        ],
    )
    write_csv(
        tmp_path,
        "02_assessments-20260102-000000.csv",
        {
            "truth": ["positive", "negative"],
            "prediction": ["positive", "positive"],  # one right
            "prediction_p": ["negative", "negative"],  # one right
            "latency_s": [0.2, 0.4],
        },
    )
    levels = [{"users": u, "tokens_per_s": 10.0 * u} for u in (1, 2, 4, 8)]
    write_csv(tmp_path, "loadtest-20260102-000000.csv", levels)
    write_csv(tmp_path, "loadtest-llama-server-20260103-000000.csv", levels[:1])
    write_csv(tmp_path, "10-loadtest-service-20260103-000000.csv", levels[1:3])  # 2 and 4
    write_csv(tmp_path, "10-loadtest-llama-server-20260103-000000.csv", levels[3:])
    write_csv(
        tmp_path,
        "bench-07-20260102-000000-1.csv",
        [
            {"config": "1 thread", "generated_tps": 50.0, "roofline_tps": 100.0},
            {"config": "2 threads", "generated_tps": 70.0, "roofline_tps": 100.0},
        ],
    )
    write_csv(tmp_path, "bench-07-20260102-000000.csv", [{"config": "old", "generated_tps": 1.0}])
    write_csv(
        tmp_path,
        "08_prediction_log-20260102-000000.csv",
        {
            "model": ["SetFit"] * 3 + ["LLM P(Yes)"] * 2,
            "truth": ["positive", "negative", "negative", "positive", "negative"],
            "predicted": ["positive", "negative", "positive", "negative", "negative"],
            "latency_ms": [5.0, 7.0, 9.0, 1000.0, 3000.0],
        },
    )
    pd.DataFrame(
        {"file_mb": [240.0, 120.0, 60.0], "kld": [0.0, 0.01, 0.9]}, index=["F16", "Q8_0", "Q2_K"]
    ).to_csv(tmp_path / "quantization-09-20260102-000000.csv")
    (tmp_path / "guard-audit-20260102-000000.jsonl").write_text(
        audit_line("LlamaCppGuard", {"input_check": 100.0, "chat": 400.0, "output_check": 100.0})
        + audit_line("LlamaCppGuard", {"input_check": 300.0, "total": 300.0})  # blocked
        + audit_line("offline prompt guard (SetFit)", {"input_check": 4.0, "total": 4.0})
    )
    return tmp_path


def test_newest_file_of_each_kind_and_never_a_look_alike(full):
    assert results.newest("bench-07", ".csv", full).name == "bench-07-20260102-000000-1.csv"
    assert results.newest("loadtest", ".csv", full).name == "loadtest-20260102-000000.csv"
    assert results.newest("nothing", ".csv", full) is None
    assert results.newest("bench-07", ".csv", full / "absent") is None


def test_collect_takes_the_figures_that_answer_the_question(full):
    table, missing = wrapup.collect(full)
    assert missing == []
    value = table.set_index("measure")["value"]
    assert value["encoder (SetFit, k=5 per class)"] == 0.8  # the newest sweep, largest k
    assert value["LLM, parsed Yes/No answer"] == 0.5
    assert value["LLM, P(Yes) ≥ threshold"] == 0.5
    assert value["LLM classifier"] == pytest.approx(300.0)  # median of 0.2 s and 0.4 s
    assert value["encoder prompt guard (screens a prompt)"] == 4.0
    assert value["LLM guard, both checks of a request"] == 200.0  # blocked one has no chat
    assert value["guard checks / chat time"] == 0.5
    assert value["measured, 2 threads"] == 70.0 and value["roofline, 2 threads"] == 100.0
    held_out = table[table["notebook"] == "08"].set_index(["topic", "measure"])["value"]
    assert held_out[("accuracy", "08 held-out: SetFit")] == pytest.approx(2 / 3)
    assert held_out[("accuracy", "08 held-out: LLM P(Yes)")] == 0.5
    assert held_out[("ms per text", "08 held-out: SetFit")] == 7.0  # each model's median
    assert held_out[("ms per text", "08 held-out: LLM P(Yes)")] == 2000.0
    serving = table[table["topic"] == "serving tokens/s"]["measure"].tolist()
    assert serving == [
        "llama_cpp.server, 1 user(s)",
        "llama_cpp.server, 4 user(s)",
        "llama_cpp.server, 8 user(s)",
        "llama-server -np N, 1 user(s)",
        "service (notebook 10), 4 user(s)",
        "llama-server -np N (notebook 10), 8 user(s)",
    ]
    assert set(table["notebook"]) == {"01", "02", "03", "06", "07", "08", "09", "10"}
    kld = table[table["topic"] == "KL divergence vs F16"].set_index("measure")["value"]
    assert kld.to_dict() == {"Q8_0 (120 MB)": 0.01, "Q2_K (60 MB)": 0.9}  # F16 itself: none
    accuracy = table[table["topic"] == "accuracy"].set_index("measure")
    assert accuracy["n"].tolist() == [80, 2, 2, 3, 2]  # the texts each accuracy was measured on
    assert (accuracy["low"] < accuracy["value"]).all() and (
        accuracy["value"] < accuracy["high"]
    ).all()
    assert table[table["topic"] != "accuracy"]["low"].isna().all()


def test_serving_throughput_is_the_tokens_per_s_by_server_and_users(full):
    table, _ = wrapup.collect(full)
    throughput = wrapup.serving_throughput(table)
    assert throughput.index.names == ["server", "users"]
    assert throughput[("llama_cpp.server", 8)] == 80.0
    assert throughput[("service (notebook 10)", 4)] == 40.0
    assert throughput[("llama-server -np N (notebook 10)", 8)] == 80.0
    assert len(throughput) == 6  # only the serving rows: no accuracy, no decode speed
    assert wrapup.serving_throughput(table[table["topic"] == "accuracy"]).empty


def test_missing_results_name_the_notebook_to_run(tmp_path):
    table, missing = wrapup.collect(tmp_path)
    assert table.empty and len(missing) == len(wrapup.SOURCES)
    assert any("01_past_encoder_classifier_cpu.ipynb" in line for line in missing)
    assert wrapup.encoder_answer(table).startswith("Not answerable yet")
    wrapup.plot(table)  # empty panels say what to run instead of failing


def test_a_file_from_another_notebook_version_is_a_line_not_a_crash(tmp_path):
    write_csv(tmp_path, "bench-07-20260102-000000.csv", [{"config": "x", "tps": 1.0}])
    table, missing = wrapup.collect(tmp_path)
    assert any("bench-07-20260102-000000.csv has no column" in line for line in missing)


def test_encoder_answer_compares_accuracies_by_their_intervals(full):
    table, _ = wrapup.collect(full)
    # encoder 0.8 on 80 texts vs the LLM's 0.5 on 2: the intervals overlap; 300 ms vs 4 ms
    answer = wrapup.encoder_answer(table)
    assert answer.startswith("Yes, on these figures: the encoder's accuracy 0.800 (95 % interval")
    assert (
        "80 texts) is indistinguishable on these texts from the better LLM reading's 0.500"
        in answer
    )
    assert answer.endswith("per text the LLM classifier takes 75.0x the encoder's time.")

    def with_counts(encoder, llm, n_llm):
        """The table with the encoder's and the LLM's accuracies (and the LLM's n) replaced."""
        rows = table.copy()
        for start, value, n in (("encoder", encoder, 80), ("LLM,", llm, n_llm)):
            hit = rows["measure"].str.startswith(start)
            low, high = wrapup.scoring.wilson(round(value * n), n)
            rows.loc[hit, ["value", "n", "low", "high"]] = [value, n, low, high]
        return rows

    better = wrapup.encoder_answer(with_counts(0.9, 0.5, 80))
    assert better.startswith("Yes, on these figures") and "is more accurate than" in better
    worse = wrapup.encoder_answer(with_counts(0.5, 0.9, 80))
    assert worse.startswith("Not on accuracy alone") and "is less accurate than" in worse
    # 0.738 on 80 against 0.75 on 16: a few points apart, and nothing these texts can tell
    close = wrapup.encoder_answer(with_counts(0.7375, 0.75, 16))
    assert "indistinguishable on these texts" in close


def test_course_map_reads_stored_run_times(tmp_path):
    cell = {"metadata": {"execution": {
        "iopub.execute_input": "2026-11-24T07:48:33.000Z",
        "shell.execute_reply": "2026-11-24T07:48:45.400Z",
    }}}  # fmt: skip
    (tmp_path / "06_guard_companion.ipynb").write_text(json.dumps({"cells": [cell]}))
    (tmp_path / "04_renamed.ipynb").write_text(json.dumps({"cells": [{"metadata": {}}]}))
    table = course.course_map(tmp_path)
    assert table.loc["06_guard_companion", "tiny profile, s"] == 12  # 12.4 s, rounded
    assert table.loc["04_renamed", "time from"] == "no stored run yet"
    assert table.loc["01_past_encoder_classifier_cpu", "time from"] == "not in this copy"
    with pytest.raises(NotADirectoryError, match="notebooks/ folder"):
        course.course_map(tmp_path / "absent")
    with pytest.raises(ValueError, match="No notebook numbered '42'"):
        course.notebook("42")


def test_every_declared_kind_has_a_name_of_its_own_and_a_notebook_of_the_course():
    import importlib
    import pkgutil

    import llmops_lib.lessons

    kinds = []
    for info in pkgutil.walk_packages(llmops_lib.lessons.__path__, "llmops_lib.lessons."):
        module = importlib.import_module(info.name)
        kinds += [v for v in vars(module).values() if isinstance(v, results.Kind)]
    kinds = list({id(k): k for k in kinds}.values())  # a kind imported elsewhere counts once
    stems = [k.stem for k in kinds]
    assert len(stems) == len(set(stems)), sorted(stems)
    assert {s.kind.stem for s in wrapup.SOURCES} <= set(stems)  # the wrap-up reads declared kinds
    for kind in kinds:
        assert course.notebook(kind.notebook)  # an unknown notebook number is an error
