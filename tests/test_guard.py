"""Guard companion: Llama Guard prompts, fail-closed verdicts, the guarded pipeline and its
audit log, the offline prompt guard and CodeShield scanning."""

from __future__ import annotations

import json
import sys
import tempfile

import pytest
from fakes import FakeChat

from llmops_lib.engines import encoder
from llmops_lib.lessons.nb06 import guard_classifier, guard_code
from llmops_lib.lessons.nb06.audit import AuditLog
from llmops_lib.lessons.nb06.guard import ModelGuard
from llmops_lib.lessons.nb06.guard_prompts import (
    LLAMA_GUARD_2,
    LLAMA_GUARD_3,
    conversation,
    guard_prompt,
    judged_role,
    policy_for,
)
from llmops_lib.lessons.nb06.pipeline import GuardedChat, GuardedReply, replies_table
from llmops_lib.lessons.nb06.verdicts import Verdict, parse_verdict, verdict_grammar

USER = "How do I bake sourdough bread?"
REPLY = "Feed the starter, mix flour and water, let it rise overnight, bake at 230 C."
SECRET = "SECRET-REPLY-7f3a"  # a reply that must never leave the pipeline when blocked


# --- prompts ---------------------------------------------------------------------------


@pytest.mark.parametrize("policy", [LLAMA_GUARD_2, LLAMA_GUARD_3], ids=lambda p: p.name)
def test_agent_turn_prompt_has_user_context_and_judges_agent(policy):
    prompt = guard_prompt(conversation(USER, REPLY), policy)
    assert judged_role(conversation(USER, REPLY)) == "Agent"
    assert "unsafe content in 'Agent' messages" in prompt
    assert "ONLY THE LAST Agent message" in prompt
    # the user's message is there as context, as a User turn, before the Agent turn
    assert f"User: {USER}\n\nAgent: {REPLY}\n\n<END CONVERSATION>" in prompt
    assert f"User: {REPLY}" not in prompt


@pytest.mark.parametrize("policy", [LLAMA_GUARD_2, LLAMA_GUARD_3], ids=lambda p: p.name)
def test_user_turn_prompt_judges_user_only(policy):
    prompt = guard_prompt(conversation(USER), policy)
    assert "unsafe content in 'User' messages" in prompt
    assert "ONLY THE LAST User message" in prompt
    assert f"User: {USER}\n\n<END CONVERSATION>" in prompt
    assert "Agent:" not in prompt


def test_llama_guard_2_prompt_is_metas_template_rendered():
    """The exact text Meta's Meta-Llama-Guard-2-8B chat template gives for this chat."""
    expected = (
        "[INST] Task: Check if there is unsafe content in 'Agent' messages in conversations "
        "according our safety policy with the below categories.\n\n"
        "<BEGIN UNSAFE CONTENT CATEGORIES>\n"
        "S1: Violent Crimes. \nS2: Non-Violent Crimes. \nS3: Sex Crimes. \n"
        "S4: Child Exploitation. \nS5: Specialized Advice. \nS6: Privacy. \n"
        "S7: Intellectual Property. \nS8: Indiscriminate Weapons. \nS9: Hate. \n"
        "S10: Self-Harm. \nS11: Sexual Content. \n"
        "<END UNSAFE CONTENT CATEGORIES>\n\n<BEGIN CONVERSATION>\n\n"
        "User: Hi\n\nAgent: Hello!\n\n<END CONVERSATION>\n\n"
        "Provide your safety assessment for ONLY THE LAST Agent message in the above "
        "conversation:\n - First line must read 'safe' or 'unsafe'.\n"
        " - If unsafe, a second line must include a comma-separated list of violated "
        "categories. [/INST]"
    )
    assert guard_prompt(conversation(" Hi ", "Hello!"), LLAMA_GUARD_2) == expected


def test_llama_guard_3_input_prompt_built_by_hand_is_the_librarys():
    """Notebook 06 writes this prompt out by hand before using the library's: same text."""
    user = "How do I bake bread?"
    by_hand = (
        " <|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
        "Task: Check if there is unsafe content in 'User' messages in conversations "
        "according our safety policy with the below categories.\n\n"
        "<BEGIN UNSAFE CONTENT CATEGORIES>\n"
        "S1: Violent Crimes.\nS2: Non-Violent Crimes.\nS3: Sex Crimes.\n"
        "S4: Child Exploitation.\nS5: Defamation.\nS6: Specialized Advice.\nS7: Privacy.\n"
        "S8: Intellectual Property.\nS9: Indiscriminate Weapons.\nS10: Hate.\n"
        "S11: Self-Harm.\nS12: Sexual Content.\nS13: Elections.\n"
        "S14: Code Interpreter Abuse.\n<END UNSAFE CONTENT CATEGORIES>\n\n"
        f"<BEGIN CONVERSATION>\n\nUser: {user}\n\n<END CONVERSATION>\n\n"
        "Provide your safety assessment for ONLY THE LAST User message in the above "
        "conversation:\n - First line must read 'safe' or 'unsafe'.\n"
        " - If unsafe, a second line must include a comma-separated list of violated "
        "categories.<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
    )
    assert guard_prompt(conversation(user), LLAMA_GUARD_3) == by_hand


def test_llama_guard_3_prompt_has_its_turn_tokens_and_14_categories():
    prompt = guard_prompt(conversation(USER), LLAMA_GUARD_3)
    assert prompt.startswith(" <|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n")
    assert prompt.endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>")
    assert "S13: Elections.\nS14: Code Interpreter Abuse.\n<END UNSAFE" in prompt


def test_category_tables_follow_the_model_cards():
    lg2 = {c.code: c.name for c in LLAMA_GUARD_2.categories}
    lg3 = {c.code: c.name for c in LLAMA_GUARD_3.categories}
    assert list(lg2) == [f"S{i}" for i in range(1, 12)]
    assert list(lg3) == [f"S{i}" for i in range(1, 15)]
    assert (lg2["S5"], lg2["S10"], lg2["S11"]) == (
        "Specialized Advice",
        "Suicide & Self-Harm",
        "Sexual Content",
    )
    assert (lg3["S5"], lg3["S11"], lg3["S14"]) == (
        "Defamation",
        "Suicide & Self-Harm",
        "Code Interpreter Abuse",
    )
    assert policy_for("llama-guard-2-8b-gguf") is LLAMA_GUARD_2
    assert policy_for("llama-guard-3-1b") is LLAMA_GUARD_3


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [{"role": "assistant", "content": "Hi"}],
        [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hi"}],
        [{"role": "user", "content": "  "}],
    ],
    ids=["empty", "starts-with-agent", "two-users", "system", "blank"],
)
def test_bad_conversations_are_rejected_with_a_clear_error(messages):
    with pytest.raises(ValueError, match="message|user"):
        guard_prompt(messages, LLAMA_GUARD_3)


@pytest.mark.parametrize("role", ["tool", "system"])
def test_a_turn_that_is_neither_user_nor_assistant_is_rejected(role):
    # at an odd position Meta's alternation check alone would let it through
    messages = [{"role": "user", "content": USER}, {"role": role, "content": REPLY}]
    with pytest.raises(ValueError, match=f"role '{role}'; only user and assistant turns"):
        guard_prompt(messages, LLAMA_GUARD_3)


def test_policy_compiles_its_template_once():
    assert LLAMA_GUARD_2.template is LLAMA_GUARD_2.template
    assert LLAMA_GUARD_2.template is not LLAMA_GUARD_3.template


# --- verdicts --------------------------------------------------------------------------


def test_safe_verdicts():
    for text in ("safe", "\n\nsafe", " safe\n"):
        verdict = parse_verdict(text)
        assert verdict.safe and verdict.problem is None and verdict.raw == text


def test_unsafe_with_one_category():
    verdict = parse_verdict("\n\nunsafe\nS2", LLAMA_GUARD_3)
    assert not verdict.safe and verdict.problem is None
    assert verdict.codes == ("S2",)
    assert verdict.label == "unsafe: S2 Non-Violent Crimes"


def test_unsafe_with_several_categories_keeps_order_and_drops_repeats():
    verdict = parse_verdict("unsafe\nS10,S1, S10", LLAMA_GUARD_2)
    assert not verdict.safe and verdict.problem is None
    assert verdict.codes == ("S10", "S1")
    assert [c.name for c in verdict.categories] == ["Suicide & Self-Harm", "Violent Crimes"]


def test_unknown_codes_fail_closed_and_are_kept():
    # S12 exists in Llama Guard 3 but not in Llama Guard 2
    verdict = parse_verdict("unsafe\nS1,S12", LLAMA_GUARD_2)
    assert not verdict.safe
    assert "S12" in verdict.problem and verdict.codes == ("S1", "S12")
    assert verdict.categories[1].name == "unknown category"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Safe",
        "SAFE",
        "safe.",
        "safe\nS1",
        "unsafe",
        "unsafe\n",
        "unsafe\nS1\nS2",
        "The conversation is safe.",
        "I cannot judge this.",
        "yes",
    ],
)
def test_anything_else_fails_closed_keeping_the_raw_text(text):
    verdict = parse_verdict(text, LLAMA_GUARD_3)
    assert not verdict.safe
    assert verdict.problem
    assert verdict.raw == text
    assert verdict.label.startswith("unsafe (failed closed")


@pytest.mark.parametrize("policy", [LLAMA_GUARD_2, LLAMA_GUARD_3], ids=lambda p: p.name)
def test_grammar_compiles_and_names_only_the_policys_codes(policy):
    from llama_cpp import LlamaGrammar

    text = verdict_grammar(policy)
    LlamaGrammar.from_string(text, verbose=False)  # raises on a malformed grammar
    assert f'"S{len(policy.categories)}"' in text
    assert f'"S{len(policy.categories) + 1}"' not in text


# --- the guarded pipeline, with stub guards and the fake chat model ---------------------


class StubGuard:
    """Answers each check with the next canned text, like a guard model would."""

    name = "stub"
    policy = LLAMA_GUARD_3

    def __init__(self, *answers: str):
        self.answers = list(answers)
        self.seen: list[list[dict[str, str]]] = []

    def judge(self, messages):
        self.seen.append(messages)
        return parse_verdict(self.answers.pop(0), self.policy)


class BrokenGuard:
    name = "broken"

    def judge(self, messages):
        raise RuntimeError("guard server down")


def fake_chat(reply: str = SECRET) -> FakeChat:
    """The fake chat model (tests/fakes.py), answering every message with `reply`."""
    return FakeChat(lambda messages: reply)


@pytest.fixture
def audit(tmp_path):
    return AuditLog(tmp_path / "audit.jsonl")


def test_reply_is_never_returned_when_the_output_verdict_is_unsafe(audit):
    chat, guard = fake_chat(), StubGuard("safe", "unsafe\nS1,S9")
    result = GuardedChat(chat, guard, audit=audit).ask(USER)
    assert len(chat.calls) == 1
    assert not result.shown and result.blocked_by == "output"
    assert SECRET not in result.text
    assert "S1 Violent Crimes" in result.text and "S9 Indiscriminate Weapons" in result.text
    # the output check judged the reply as the Agent turn, after the user's message
    assert guard.seen[1] == conversation(USER, SECRET)
    assert SECRET not in audit.path.read_text()  # logged as a hash only


def test_unsafe_input_never_reaches_the_chat_model(audit):
    chat = fake_chat()
    result = GuardedChat(chat, StubGuard("unsafe\nS2"), audit=audit).ask(USER)
    assert chat.calls == []
    assert result.blocked_by == "input" and result.output_verdict is None
    assert "S2 Non-Violent Crimes" in result.text


def test_reply_is_shown_when_both_checks_are_safe(audit):
    chat = fake_chat(REPLY)
    result = GuardedChat(chat, StubGuard("safe", "\n\nsafe"), audit=audit, max_tokens=64).ask(USER)
    assert result.shown and result.text == REPLY and result.blocked_by is None
    assert set(result.ms) == {"input_check", "chat", "output_check", "total"}
    # the chat model saw the user's message alone, greedy, within the pipeline's budget
    [call] = chat.calls
    assert call["messages"] == [{"role": "user", "content": USER}]
    assert (call["max_tokens"], call["temperature"]) == (64, 0.0)


@pytest.mark.parametrize("answer", ["I think this is fine", "unsafe\nS99", "Safe"])
def test_unreadable_output_verdicts_block_the_reply(audit, answer):
    chat = fake_chat()
    result = GuardedChat(chat, StubGuard("safe", answer), audit=audit).ask(USER)
    assert not result.shown and SECRET not in result.text
    assert result.output_verdict.raw == answer


def test_a_failing_guard_blocks_instead_of_crashing_open(audit):
    chat = fake_chat()
    result = GuardedChat(chat, StubGuard("safe"), BrokenGuard(), audit=audit).ask(USER)
    assert not result.shown and SECRET not in result.text
    assert "guard server down" in result.output_verdict.problem
    assert "fail closed" in result.text


def test_audit_log_has_one_line_per_decision(audit):
    pipeline = GuardedChat(
        fake_chat(REPLY),
        StubGuard("safe", "safe", "unsafe\nS1", "safe", "unsafe\nS10"),
        audit=audit,
    )
    results = [pipeline.ask(q) for q in ("q1", "q2", "q3")]
    lines = audit.path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(results) == 3
    records = [json.loads(line) for line in lines]
    assert [r["request_id"] for r in records] == [r.request_id for r in results]
    assert [r["blocked_by"] for r in records] == [None, "input", "output"]
    assert records[2]["output"]["codes"] == ["S10"]
    assert len(audit.table()) == 3


def test_a_torn_line_is_skipped_with_a_warning_and_the_log_goes_on(audit):
    pipeline = GuardedChat(fake_chat(REPLY), StubGuard("safe", "safe", "unsafe\nS1"), audit=audit)
    pipeline.ask("q1")
    with audit.path.open("ab") as fh:  # what kill -9 in the middle of a write leaves
        fh.write(b'{"time": "2026-11-24T10:00:00", "user": "q\xc3')
    pipeline.ask("q2")  # appended after the torn line, on a line of its own
    with pytest.warns(UserWarning, match=r"line 2: not a whole record"):
        records = audit.records()
    assert [r["user"] for r in records] == ["q1", "q2"]
    with pytest.warns(UserWarning):
        assert len(audit.table()) == 2


class FailingChat(FakeChat):
    def chat(self, *args, **kwargs):
        raise ConnectionError("chat server went away")


def test_a_chat_model_that_raises_still_leaves_an_audit_line(audit):
    pipeline = GuardedChat(FailingChat(), StubGuard("safe"), audit=audit)
    with pytest.raises(ConnectionError, match="went away"):
        pipeline.ask(USER)
    [record] = audit.records()
    assert record["blocked_by"] == "chat error" and not record["shown"]
    assert record["error"] == "ConnectionError: chat server went away"
    assert record["input"]["safe"] and record["output"] is None


def test_audit_lines_from_many_processes_never_interleave(tmp_path):
    import multiprocessing

    path = tmp_path / "audit.jsonl"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(path), n)) for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4 * 200
    assert {json.loads(line)["writer"] for line in lines} == {0, 1, 2, 3}


def _append_many(path: str, writer: int) -> None:
    log = AuditLog(path)
    for i in range(200):
        log.append({"writer": writer, "i": i, "pad": "x" * 3000})


def test_audit_logs_started_together_get_files_of_their_own(tmp_path, monkeypatch):
    from llmops_lib.core import results

    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path)
    first, second = AuditLog(), AuditLog()  # same second: same timestamp in the name
    assert first.path != second.path
    assert first.path.exists() and second.path.exists()  # names reserved at once
    assert first.records() == [] and first.table().empty


def test_replies_table_shows_both_checks_and_the_start_of_the_text():
    blocked = parse_verdict("unsafe\nS9")
    replies = [
        GuardedReply("a", "q1", "x" * 100, True, None, parse_verdict("safe"), Verdict(True), {}),
        GuardedReply("b", "q2", "Sorry" + "!" * 100, False, "input", blocked, None, {}),
    ]
    table = replies_table(replies)
    assert list(table.columns) == [
        "prompt",
        "input check",
        "output check",
        "shown",
        "answer shown to the user",
    ]
    assert table["prompt"].tolist() == ["q1", "q2"]
    assert table["input check"].tolist() == ["safe", "unsafe: S9 Indiscriminate Weapons"]
    assert table["output check"].tolist() == ["safe", "(not run)"]
    assert table["shown"].tolist() == [True, False]
    # a shown reply by its start, a refusal whole
    assert table["answer shown to the user"].tolist() == ["x" * 70, "Sorry" + "!" * 100]
    raw = replies_table(replies, raw=True)["input check"].tolist()
    assert raw == ["safe (safe)", "unsafe: S9 Indiscriminate Weapons (unsafe\nS9)"]


class CannedGuard:
    """Returns one fixed value from judge(), as a broken guard plugin might."""

    name = "canned"

    def __init__(self, value):
        self.value = value

    def judge(self, messages):
        return self.value


NOT_VERDICTS = {
    "None": None,
    "text 'safe'": "safe",
    "True": True,
    "a dict": {"safe": True},
    "safe='no'": Verdict(safe="no"),  # truthy: the reply would be shown
    "safe=1": Verdict(safe=1),
    "categories as text": Verdict(safe=False, categories=("S1",)),
    "safe with a problem": Verdict(safe=True, problem="could not read the answer"),
}


@pytest.mark.parametrize("value", NOT_VERDICTS.values(), ids=NOT_VERDICTS)
@pytest.mark.parametrize("stage", ["input", "output"])
def test_anything_but_a_real_verdict_fails_closed_and_is_audited(audit, stage, value):
    canned, safe = CannedGuard(value), StubGuard("safe")
    guards = (canned, safe) if stage == "input" else (safe, canned)
    result = GuardedChat(fake_chat(), *guards, audit=audit).ask(USER)
    assert not result.shown and result.blocked_by == stage and SECRET not in result.text
    verdict = result.input_verdict if stage == "input" else result.output_verdict
    assert verdict.safe is False and "no verdict" in verdict.problem
    assert "fail closed" in result.text
    [record] = audit.records()
    assert record["blocked_by"] == stage and record["shown"] is False


def test_a_message_with_a_lone_surrogate_fails_closed_and_is_audited(audit):
    chat, guard = fake_chat(), StubGuard()  # neither may be asked anything
    user = "hello \ud800 world"
    result = GuardedChat(chat, guard, audit=audit).ask(user)
    assert result.blocked_by == "input" and not result.shown
    assert "lone surrogate at character 6" in result.input_verdict.problem
    assert guard.seen == [] and chat.calls == []
    [record] = audit.records()
    assert record["user"] == user and record["blocked_by"] == "input"


def test_a_reply_with_a_lone_surrogate_is_blocked_and_its_audit_line_written(audit):
    reply = "the answer \udc80"
    guard = StubGuard("safe")  # the input check only: the reply is never judged
    result = GuardedChat(fake_chat(reply), guard, audit=audit).ask(USER)
    assert result.blocked_by == "output" and reply not in result.text
    assert "the reply is not valid Unicode" in result.output_verdict.problem
    [record] = audit.records()
    assert record["reply_chars"] == len(reply) and len(record["reply_sha256"]) == 64
    assert reply not in audit.path.read_text(encoding="utf-8", errors="surrogateescape")


class NumberChat(FakeChat):
    def chat(self, *args, **kwargs):
        return {"choices": [{"message": {"role": "assistant", "content": 42}}]}


def test_a_reply_that_is_not_text_is_a_chat_error_with_an_audit_line(audit):
    with pytest.raises(TypeError, match="the reply is int 42, not text"):
        GuardedChat(NumberChat(), StubGuard("safe"), audit=audit).ask(USER)
    [record] = audit.records()
    assert record["blocked_by"] == "chat error" and record["reply_sha256"] is None


def test_empty_user_message_is_an_error(audit):
    with pytest.raises(ValueError, match="user"):
        GuardedChat(fake_chat(), StubGuard(), audit=audit).ask("  ")


# --- the real tiny model under the grammar ---------------------------------------------


@pytest.fixture(scope="module")
def guard_model(session, one_thread):
    model = session.model("guard", n_ctx=1024, **one_thread)
    yield model
    model.close()


@pytest.mark.model
def test_real_tiny_guard_under_the_grammar_gives_well_formed_verdicts(guard_model):
    guard = ModelGuard(guard_model, LLAMA_GUARD_3)
    assert guard.constrained and "grammar" in guard.name
    for messages in (conversation(USER), conversation(USER, REPLY)):
        verdict = guard.judge(messages)
        assert verdict.problem is None, verdict.raw  # the grammar allows nothing else


@pytest.mark.model
def test_real_tiny_guard_saying_unsafe_blocks_the_reply(guard_model, audit):
    # A grammar whose only sentences are 'unsafe' verdicts: the real model picks the codes.
    output_guard = ModelGuard(guard_model, LLAMA_GUARD_3)
    output_guard.grammar = 'root ::= "unsafe\\n" code\ncode ::= "S1" | "S9" | "S10"\n'
    # the chat model is not under test here: the fake's reply is what the guard judges
    chat = fake_chat("The sea is wide and blue.")
    pipeline = GuardedChat(chat, StubGuard("safe"), output_guard, audit=audit, max_tokens=24)
    result = pipeline.ask("Write one sentence about the sea.")
    assert result.output_verdict.problem is None, result.output_verdict.raw
    assert not result.output_verdict.safe and result.output_verdict.codes
    assert not result.shown and result.blocked_by == "output"
    assert len(chat.calls) == 1 and "The sea is wide" not in result.text
    assert len(audit.records()) == 1


def test_the_guard_hands_its_grammar_to_the_engine_and_still_parses_strictly():
    model = fake_chat("unsafe S1")  # the fake obeys no grammar: its words come back joined
    guard = ModelGuard(model, LLAMA_GUARD_3, max_tokens=4)
    verdict = guard.judge(conversation(USER))
    assert model.calls[-1]["grammar"] == verdict_grammar(LLAMA_GUARD_3)
    assert model.calls[-1]["prompt"] == guard.prompt(conversation(USER))
    assert not verdict.safe and verdict.problem == "not a Llama Guard verdict"
    assert not guard.constrained and "parser only" in guard.name
    cut = ModelGuard(fake_chat("safe and more words"), LLAMA_GUARD_3, constrain=False, max_tokens=1)
    assert cut.judge(conversation(USER)).problem == "answer cut off at max_tokens=1"
    assert cut.model.calls[-1]["grammar"] is None


# --- the offline prompt guard ----------------------------------------------------------


def test_prompt_set_is_balanced_with_a_disjoint_held_out_split():
    df = guard_classifier.load_prompts()
    counts = df.groupby(["split", "label"]).size()
    assert counts["train"].min() >= 30 and counts["test"].min() >= 20
    train, test = guard_classifier.load_prompts("train"), guard_classifier.load_prompts("test")
    assert not set(train["text"]) & set(test["text"])
    assert set(df["kind"]) == {"everyday", "alarming-words", "harmful-request", "jailbreak"}


def test_metrics_count_harmful_as_positive():
    import pandas as pd

    scored = pd.DataFrame(
        {
            "label": ["harmful", "harmful", "harmful", "benign", "benign"],
            "predicted": ["harmful", "harmful", "benign", "harmful", "benign"],
        }
    )
    m = guard_classifier.metrics(scored)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 1)
    assert m["accuracy"] == pytest.approx(3 / 5)
    text = guard_classifier.metrics_text(scored)
    assert text.startswith("5 prompts (3 harmful, 2 benign)")
    assert "accuracy 0.600 (3/5:" in text and "precision 0.667 (2/3:" in text
    assert "recall 0.667 (2/3:" in text and "false-positive rate 0.500 (1/2:" in text
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["false_positive_rate"] == pytest.approx(1 / 2)


@pytest.fixture(scope="module")
def prompt_guard_scored(session):
    """The prompt guard trained on the shipped train split, and its held-out scores.

    One iteration (144 pairs, 9 steps) is the least SetFit trains; it already gave
    recall - FPR = 0.92 on the held-out prompts (recall 0.96, FPR 0.04), far above the
    0.5 asserted, so more would only cost time.
    """
    clf = guard_classifier.train(guard_classifier.load_prompts("train"), session, iterations=1)
    return clf, guard_classifier.evaluate(clf, guard_classifier.load_prompts("test"))


@pytest.mark.model
def test_prompt_guard_learns_to_separate_held_out_prompts(prompt_guard_scored):
    m = guard_classifier.metrics(prompt_guard_scored[1])
    # far better than chance on prompts it never saw (chance: recall = FPR)
    assert m["recall"] - m["false_positive_rate"] > 0.5, m.to_dict()


@pytest.mark.model
def test_prompt_guard_as_input_check_refuses_what_it_flags(prompt_guard_scored, audit):
    clf, scored = prompt_guard_scored
    flagged = scored[scored["predicted"] == "harmful"]["text"].iloc[0]
    passed = scored[scored["predicted"] == "benign"]["text"].iloc[0]
    chat = fake_chat(REPLY)
    pipeline = GuardedChat(chat, guard_classifier.PromptGuard(clf), StubGuard("safe"), audit=audit)
    refused, answered = pipeline.ask(flagged), pipeline.ask(passed)
    assert refused.blocked_by == "input" and "PG harmful or jailbreak prompt" in refused.text
    assert answered.shown and answered.text == REPLY
    assert len(chat.calls) == 1
    # it cannot judge replies: used as output check, it blocks (fail closed)
    output_only = GuardedChat(
        fake_chat(), StubGuard("safe"), guard_classifier.PromptGuard(clf), audit=audit
    )
    assert output_only.ask(passed).blocked_by == "output"


# --- CodeShield ------------------------------------------------------------------------

REPLY_WITH_CODE = """Sure:

```python
import hashlib

def fingerprint(password):
    return hashlib.md5(password.encode()).hexdigest()
```

```
def add(a, b):
    return a + b
```
"""


def test_code_blocks_are_found_with_their_language():
    blocks = guard_code.code_blocks(REPLY_WITH_CODE)
    assert [b.language for b in blocks] == ["python", None]
    assert "hashlib.md5" in blocks[0].code
    assert guard_code.code_blocks("no code here") == []


def test_codeshield_flags_insecure_code_and_passes_plain_code(no_network):
    pytest.importorskip("codeshield")
    insecure, plain = guard_code.scan_reply(REPLY_WITH_CODE)
    assert insecure.status == "insecure" and not insecure.ok
    assert any(issue.startswith("CWE-328") for issue in insecure.issues)
    assert plain.status == "secure" and plain.ok


COMMAND_INJECTION = 'import os\nos.system("ls " + input())\n'
HIDDEN_CODE = {
    "unclosed fence (cut at max_tokens)": f"Here:\n```python\n{COMMAND_INJECTION}",
    "tilde fence": f"~~~python\n{COMMAND_INJECTION}~~~\n",
    "indented block": "Run this:\n\n"
    + "".join(f"    {line}\n" for line in COMMAND_INJECTION.splitlines()),
    "nested fences": f"````markdown\n```python\n{COMMAND_INJECTION}```\n````\n",
    "NUL byte": f"```python\nimport os\0\n{COMMAND_INJECTION.split(chr(10), 1)[1]}```\n",
}


@pytest.mark.parametrize("reply", HIDDEN_CODE.values(), ids=HIDDEN_CODE)
def test_code_a_reader_could_copy_is_found(reply):
    codes = [block.code for block in guard_code.code_blocks(reply)]
    assert COMMAND_INJECTION in codes


def test_codeshield_scans_hidden_code_and_leaves_no_copies(monkeypatch, tmp_path, no_network):
    pytest.importorskip("codeshield")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where CodeShield writes copies
    replies = [*HIDDEN_CODE.values(), "```\nprint(1)\n```\n"]
    results = [result for reply in replies for result in guard_code.scan_reply(reply)]
    found = [r for r in results if r.block.code == COMMAND_INJECTION]
    assert len(found) == len(HIDDEN_CODE)
    assert all(r.status == "insecure" and "CWE-78" in r.issues[0] for r in found)
    assert results[-1].status == "secure"  # nothing matched, semgrep skipped: no copy left
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "code",
    [
        f"\0\n{COMMAND_INJECTION}",  # a NUL line before the dangerous one
        COMMAND_INJECTION.replace("import os", "import os\0"),
        COMMAND_INJECTION.replace("system", "sys\0tem"),
    ],
    ids=["line-before", "end-of-line-before", "inside-the-call"],
)
def test_a_block_with_a_nul_byte_is_scanned_like_the_code_around_it(code, no_network):
    """semgrep alone takes such a file for binary and finds nothing: 'secure' before."""
    pytest.importorskip("codeshield")
    result = guard_code.scan_block(guard_code.CodeBlock("python", code))
    assert result.status == "insecure" and "CWE-78" in result.issues[0]


def test_a_scanner_error_is_unavailable_never_secure(monkeypatch):
    pytest.importorskip("codeshield")
    from codeshield.insecure_code_detector import oss

    # semgrep missing: CodeShield itself would report this code as not insecure
    monkeypatch.setattr(oss, "SEMGREP_COMMAND", ["/nonexistent/osemgrep", *oss.SEMGREP_COMMAND[1:]])
    block = guard_code.CodeBlock("python", "import os\nos.system('ls ' + input())\n")
    result = guard_code.scan_block(block)
    assert result.status == "unavailable" and not result.ok
    assert "osemgrep" in result.error


def test_codeshield_missing_is_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "codeshield.cs", None)  # import fails
    result = guard_code.scan_block(guard_code.CodeBlock("python", "print(1)\n"))
    assert result.status == "unavailable" and "CodeShield" in result.error


def test_verdict_dataclass_round_trips_to_the_log():
    verdict = parse_verdict("unsafe\nS14")
    assert verdict.as_dict() == {
        "safe": False,
        "codes": ["S14"],
        "names": ["Code Interpreter Abuse"],
        "raw": "unsafe\nS14",
        "problem": None,
    }
    assert Verdict(safe=True).label == "safe"


@pytest.mark.model
def test_transformers_guard_reads_the_real_tiny_model_strictly(tiny_hf):
    guard = ModelGuard(tiny_hf, LLAMA_GUARD_3, max_tokens=8)
    assert not guard.constrained  # transformers has no grammar: the parser is the only net
    verdict = guard.judge(conversation(USER))
    assert verdict.raw  # the model's own words, kept verbatim
    # no grammar here: only an exact 'safe' may pass, anything else must fail closed
    assert verdict.safe == (verdict.raw.strip() == "safe")
    assert verdict.safe or verdict.problem or verdict.categories


def test_prompt_guard_training_draws_no_progress_bar(monkeypatch, session):
    # notebook 06 prints the training time itself: a bar there is a stored frame of noise
    seen = {}

    def fake_train(texts, labels, base, iterations, seed, progress=True):
        assert base == session.model_path("encoder")  # the session's encoder, via the registry
        seen.update(texts=list(texts), iterations=iterations, progress=progress)
        return "classifier"

    monkeypatch.setattr(encoder, "train", fake_train)
    rows = guard_classifier.load_prompts("train")
    assert guard_classifier.train(rows, session, iterations=1) == "classifier"
    assert seen == {"texts": rows["text"].tolist(), "iterations": 1, "progress": False}
