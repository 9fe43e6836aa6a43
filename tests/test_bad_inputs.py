"""Every bad input is the library's own clear error (errors.InputError), never a number.

First the cases a probe found (NaN sizes, users=(True,), fractional token counts,
thresholds outside [0, 1]); then property tests with Hypothesis: any input to a public
function either works or raises InputError, never a bare TypeError, KeyError or
ZeroDivisionError from deep inside. No model is loaded; every example runs in milliseconds.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from fakes import FakeChat, FakeEndpoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llmops_lib
from llmops_lib.core import datasets, errors
from llmops_lib.core.errors import InputError
from llmops_lib.lessons import classify, loadtest, scoring
from llmops_lib.lessons.nb05 import chat
from llmops_lib.lessons.nb06 import guard_code, verdicts
from llmops_lib.lessons.nb06.audit import AuditLog
from llmops_lib.lessons.nb06.pipeline import GuardedChat
from llmops_lib.lessons.nb07 import bench
from llmops_lib.planning import catalog, gguf_header, launch, memory, roofline, sharding
from llmops_lib.programs import llama_bench

NAN, INF = float("nan"), float("inf")
LLAMA_8B = catalog.get("llama-3.1-8b-instruct")


@pytest.mark.parametrize("gpu", [NAN, INF, -INF, -16, 0, 0.0, True, None, [16]])
def test_a_gpu_size_must_be_a_finite_positive_number(gpu):
    with pytest.raises(InputError, match=r"gpu"):
        memory.plan(LLAMA_8B, "bf16", gpu)
    with pytest.raises(InputError, match=r"gpu"):
        sharding.shard_plan(LLAMA_8B, "bf16", gpu)


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: memory.plan(LLAMA_8B, "bf16", "T4", context_tokens=2.5), "context_tokens=2.5"),
        (lambda: memory.plan(LLAMA_8B, "bf16", "T4", context_tokens=NAN), "context_tokens=nan"),
        (lambda: memory.plan(LLAMA_8B, "bf16", "T4", batch=True), "batch=True"),
        (lambda: memory.plan(LLAMA_8B, "nf4", "T4", keep_bytes=NAN), "keep_bytes=nan"),
        (lambda: memory.plan(LLAMA_8B, "bf16", "T4", keep_bytes=-2), "keep_bytes=-2"),
        (lambda: memory.kv_cache_bytes(LLAMA_8B, 1024, kv_type=INF), "KV cache type inf"),
        (lambda: memory.kv_cache_bytes(LLAMA_8B, 1024, kv_type=["f16"]), "KV cache type"),
        (lambda: memory.fit_table([LLAMA_8B], kv_types="q8_0"), "kv_types='q8_0'"),
        (lambda: memory.weight_bytes(LLAMA_8B, 4), "precision 4"),
        (lambda: memory.fit_table([]), r"specs=\[\]"),
        (lambda: sharding.shard_plan(LLAMA_8B, "bf16", "H100", 1.5), "context_tokens=1.5"),
        (lambda: sharding.plan_table(gpus="H100"), "gpus='H100'"),
        (lambda: sharding.shard_plan(None, "bf16", "H100"), "model None"),
        (
            lambda: launch.vllm_command(sharding.shard_plan(LLAMA_8B, "bf16", "H100"), port=0),
            "port=0",
        ),
        (
            lambda: launch.tgi_command(sharding.shard_plan(LLAMA_8B, "bf16", "H100"), port=True),
            "port=True",
        ),
        (lambda: launch.tgi_command("plan"), "pass a ShardPlan"),
        (lambda: launch.as_shell(["ls"]), "tgi_command"),
        (lambda: roofline.roofline_tps(NAN, 1e9), "bandwidth_gbs=nan"),
    ],
)
def test_planner_sizes_are_checked(call, named):
    with pytest.raises(InputError, match=named):
        call()


@pytest.fixture
def endpoint():
    return FakeEndpoint(FakeChat())


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"users": (True,)}, r"users\[0\]=True"),
        ({"users": (1, 2.0)}, r"users\[1\]=2.0"),
        ({"users": 4}, "users=4: needs a non-empty list"),
        ({"users": (1,), "max_tokens": 8.5}, "max_tokens=8.5"),
        ({"users": (1,), "requests_per_user": 0}, "requests_per_user=0"),
        ({"users": (1,), "timeout_s": NAN}, "timeout_s=nan"),
        ({"users": (1,), "prompts": ()}, "prompts"),
        ({"users": (1,), "prompts": "hello"}, "prompts='hello'"),
    ],
)
def test_load_test_levels_are_checked_before_any_request(endpoint, kwargs, named):
    with pytest.raises(InputError, match=named):
        loadtest.run(endpoint, **kwargs)
    assert endpoint.requests == []


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"reps": 1.5}, "reps=1.5"),
        ({"warmup": -1}, "warmup=-1"),
        ({"max_tokens": True}, "max_tokens"),
    ],
)
def test_bench_counts_are_whole_numbers(kwargs, named):
    loads = []
    with pytest.raises(InputError, match=named):
        bench.bench(lambda: loads.append(1) or FakeChat(), "fake", **kwargs)
    assert loads == []  # refused before loading


@pytest.mark.parametrize("threshold", [-0.1, 1.5, NAN, "0.5", None])
def test_thresholds_must_lie_in_0_1(threshold):
    scored = pd.DataFrame(
        {"lang": ["en"], "truth": ["positive"], "prediction": ["positive"], "p_positive": [0.9]}
    )
    with pytest.raises(InputError, match="threshold="):
        scoring.accuracy_table(scored, threshold)
    data = datasets.load_assessments("en").head(1)
    model = FakeChat(token_probs={"Yes": 0.9, "No": 0.1})
    with pytest.raises(InputError, match="threshold="):
        classify.classify(model, data, threshold=threshold, progress=False)


# Property tests: anything at all, or a valid value, for each argument.
FAST = settings(
    max_examples=40,
    deadline=None,
    database=None,  # no .hypothesis/ folder left in the repository
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.lists(st.integers(-1, 3), max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)
MODELS = st.sampled_from(sorted(catalog.MODELS))
PRECISIONS = st.sampled_from(memory.PRECISIONS)
GPUS = st.one_of(st.sampled_from(sorted(memory.GPUS)), st.floats(1, 200))
CONTEXTS = st.integers(1, 200_000)


def either(valid: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(valid, ANYTHING)


def works_or_input_error(call, *args, **kwargs):
    """Run the call; an InputError is a clear refusal, anything else would fail the test."""
    try:
        return call(*args, **kwargs)
    except InputError as err:
        assert str(err), "an InputError must say what is wrong"
        return None


@FAST
@given(
    either(MODELS), either(PRECISIONS), either(GPUS), either(CONTEXTS), either(st.integers(1, 8))
)
def test_memory_plan_works_or_says_why(model, precision, gpu, context, batch):
    result = works_or_input_error(memory.plan, model, precision, gpu, context, batch)
    if result is not None:
        assert math.isfinite(result.total_gb) and result.total_gb > 0


@FAST
@given(either(MODELS), either(PRECISIONS), either(GPUS), either(CONTEXTS))
def test_shard_plan_and_launch_work_or_say_why(model, precision, gpu, context):
    plan = works_or_input_error(sharding.shard_plan, model, precision, gpu, context)
    if plan is not None:
        assert plan.shards >= 1 and plan.max_sequences >= 1
        for command in (launch.tgi_command, launch.vllm_command):
            argv = works_or_input_error(command, plan)
            if argv is not None:
                assert "--model-id" in argv or "--model" in argv


@FAST
@given(
    either(st.lists(st.integers(1, 3), min_size=1, max_size=2)),
    either(st.integers(1, 2)),
    either(st.integers(1, 4)),
    either(st.floats(0.5, 5)),
)
def test_load_test_works_or_says_why(endpoint, users, requests_per_user, max_tokens, timeout_s):
    result = works_or_input_error(
        loadtest.run, endpoint, users, requests_per_user, max_tokens, timeout_s
    )
    if result is not None:
        summary, _ = result
        assert list(summary.index) == list(users)
    assert loadtest.user_threads_alive() == 0


@FAST
@given(either(st.integers(1, 2)), either(st.integers(0, 1)), either(st.integers(1, 4)))
def test_bench_works_or_says_why(reps, warmup, max_tokens):
    runs = works_or_input_error(
        bench.bench, FakeChat, "fake", reps=reps, warmup=warmup, max_tokens=max_tokens
    )
    if runs is not None:
        assert len(runs) == reps


@FAST
@given(either(st.integers(1, 6)), either(st.integers(0, 3)), either(st.sampled_from(["en", "de"])))
def test_dataset_split_works_or_says_why(k, seed, lang):
    frame = works_or_input_error(datasets.load_assessments, lang)
    if frame is not None:
        split = works_or_input_error(datasets.split, frame, k, seed)
        if split is not None:
            train, test = split
            pairs = frame.groupby(["lang", "label"]).ngroups
            assert len(train) == k * pairs and not set(train.index) & set(test.index)


@FAST
@given(either(st.text(max_size=20)), either(st.sampled_from(["en", "de"])), either(st.floats(0, 1)))
def test_classify_works_or_says_why(text, lang, threshold):
    model = FakeChat(token_probs={"Yes": 0.7, "No": 0.3})
    msgs = works_or_input_error(classify.messages, text, lang)
    if msgs is not None:
        assert msgs[-1]["role"] == "user"
        works_or_input_error(classify.parse_answer, text)
        data = pd.DataFrame({"text": [text], "label": ["positive"], "lang": [lang]})
        rows = works_or_input_error(
            classify.classify, model, data, threshold=threshold, progress=False
        )
        if rows is not None:
            assert 0 <= rows["p_positive"].iloc[0] <= 1


@FAST
@given(
    st.lists(either(st.floats(0, 1)), max_size=4),
    st.lists(either(st.sampled_from(["positive", "negative"])), max_size=4),
)
def test_calibrate_threshold_works_or_says_why(p, truth):
    threshold = works_or_input_error(scoring.calibrate_threshold, pd.Series(p), pd.Series(truth))
    if threshold is not None:
        assert math.isfinite(threshold)


@FAST
@given(either(st.sampled_from(["tiny"])))
def test_setup_works_or_says_why(monkeypatch, profile):
    monkeypatch.setenv("LLMOPS_PROFILE", "tiny")  # what None falls back to
    session = works_or_input_error(llmops_lib.setup, profile, quiet=True)
    if session is not None:
        assert session.profile.name == (profile or "tiny")  # None: LLMOPS_PROFILE or the machine


@FAST
@given(either(st.sampled_from(["safe", "unsafe\nS1", "unsafe\nS99", "\n\nsafe"])))
def test_a_guard_verdict_is_read_or_refused(text):
    verdict = works_or_input_error(verdicts.parse_verdict, text)
    if verdict is not None:
        assert verdict.safe == (text.strip() == "safe")


# --- parsers, files and texts (issue 28): any text, bytes or JSON works or is InputError ---

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 70) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
BENCH_RUN = st.fixed_dictionaries(
    {
        "n_prompt": either(st.integers(0, 64)),
        "n_gen": either(st.integers(0, 64)),
        "n_threads": either(st.integers(1, 4)),
        "avg_ts": either(st.floats(0.1, 100)),
        "stddev_ts": either(st.floats(0, 5)),
        "backends": st.just("CPU"),
        "n_gpu_layers": st.just(0),
        "model_type": st.just("m"),
    }
)


@pytest.mark.parametrize(
    "text", ["", "not json", "[]", "{}", "[1]", '[{"n_prompt": 1}]', None, b"[]", "[" * 5000]
)
def test_llama_bench_output_that_is_not_its_json_is_named(text):
    with pytest.raises(InputError, match="Not llama-bench's `-o json` output"):
        llama_bench.parse_bench_json(text)


@FAST
@given(
    st.one_of(
        st.text(max_size=40), JSON.map(json.dumps), st.lists(BENCH_RUN, max_size=3).map(json.dumps)
    )
)
def test_llama_bench_json_is_parsed_or_refused(text):
    table = works_or_input_error(llama_bench.parse_bench_json, text)
    if table is not None:
        assert (table["tokens_per_s"] > 0).all() and len(table) == len(json.loads(text))
        works_or_input_error(llama_bench.phase_tps, table)


@FAST
@given(either(st.sampled_from(["generated_tps", "ttft_s"])), ANYTHING)
def test_bench_tables_are_summarized_or_refused(metric, runs):
    works_or_input_error(bench.summarize, runs)
    works_or_input_error(llama_bench.phase_tps, runs)
    works_or_input_error(bench.plot_summary, runs, metric)


def _small_gguf() -> bytes:
    import tempfile
    from pathlib import Path

    import gguf
    import numpy as np

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "small.gguf"
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_context_length(64)
        writer.add_token_list([b"a", b"b", b"c"])
        writer.add_tensor("t", np.zeros((4, 4), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path.read_bytes()


SMALL_GGUF = _small_gguf()


@FAST
@given(st.lists(st.tuples(st.integers(0, len(SMALL_GGUF) - 1), st.integers(0, 7)), max_size=3))
def test_a_damaged_gguf_header_is_read_or_refused_by_the_reader_alone(tmp_path, flips):
    """The damage a disk or a download does: bits flipped anywhere in a small GGUF."""
    data = bytearray(SMALL_GGUF)
    for at, bit in flips:
        data[at] ^= 1 << bit
    path = tmp_path / "damaged.gguf"
    path.write_bytes(bytes(data))
    for call in (gguf_header.read_metadata, gguf_header.check_model, gguf_header.trained_context):
        works_or_input_error(call, path)


@FAST
@given(st.binary(max_size=64))
def test_any_bytes_after_the_magic_are_read_or_refused(tmp_path, tail):
    path = tmp_path / "any.gguf"
    path.write_bytes(b"GGUF" + tail)
    works_or_input_error(gguf_header.check_model, path)


@FAST
@given(either(st.text(max_size=12)))
def test_a_conversation_turn_works_or_says_why(text):
    conv = chat.Conversation(FakeChat(n_ctx=256), "Be brief.", max_tokens=8)
    reply = works_or_input_error(conv.ask, text)
    assert len(conv.turns) == (reply is not None)


@FAST
@given(JSON)
def test_a_saved_conversation_is_loaded_or_refused(tmp_path, data):
    path = tmp_path / "chat.json"
    if isinstance(data, dict):
        data = {"format": chat.FORMAT, **data}
    path.write_text(json.dumps(data))
    works_or_input_error(chat.Conversation.load, path, FakeChat(n_ctx=256))


class _Returns:
    name = "returns"

    def __init__(self, value):
        self.value = value

    def judge(self, messages):
        return self.value


VERDICTS = st.builds(
    verdicts.Verdict,
    safe=ANYTHING,
    categories=st.one_of(st.just(()), st.tuples(st.text(max_size=3))),
    raw=either(st.text(max_size=4)),
    problem=st.one_of(st.none(), st.text(max_size=4)),
)


@FAST
@given(st.one_of(ANYTHING, VERDICTS), either(st.text(min_size=1, max_size=8)))
def test_whatever_a_guard_returns_a_reply_is_shown_only_on_a_real_safe_verdict(
    tmp_path, returned, user
):
    audit = AuditLog(tmp_path / f"audit-{len(list(tmp_path.iterdir()))}.jsonl")
    pipeline = GuardedChat(FakeChat(lambda m: "fine"), _Returns(returned), audit=audit)
    result = works_or_input_error(pipeline.ask, user)
    if result is not None:
        real_safe = isinstance(returned, verdicts.Verdict) and returned.safe is True
        assert result.shown <= real_safe  # never shown on anything else
        assert len(audit.records()) == 1  # and always audited


@FAST
@given(ANYTHING)
def test_code_is_found_in_any_reply_or_refused(text):
    blocks = works_or_input_error(guard_code.code_blocks, text)
    assert blocks is None or all("\0" not in b.code for b in blocks)


@FAST
@given(either(st.lists(st.text(max_size=5), min_size=1, max_size=3)))
def test_texts_for_an_encoder_are_a_list_of_text_or_refused(texts):
    checked = works_or_input_error(errors.texts, "texts", texts)
    if checked is not None:
        assert checked == list(texts) and all(isinstance(t, str) for t in checked)
