"""Llama Guard around a chat model: verdicts that fail closed, a grammar, an audit log.

The guard is itself an LLM: it answers with text, and text can be anything. So the
verdict is read strictly: `safe`, or `unsafe` plus one line of known category codes;
every other answer counts as unsafe (fail closed) and keeps the raw text for the audit.
On llama.cpp a GBNF grammar goes further and makes any other answer impossible.

The guarded pipeline checks the user's message (input check), asks the chat model,
then checks the reply in the context of the user's message (output check). The reply
is shown only when both verdicts are safe; a blocked reply never leaves the pipeline,
not even in the audit log, which records a hash of it instead.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
import uuid
import warnings
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from ...core import results
from ...core.errors import InputError
from ...core.plain_text import mark_contents
from ...engines.llamacpp import tokenize_plain
from .guard_prompts import (
    LLAMA_GUARD_3,
    Category,
    GuardPolicy,
    conversation,
    guard_prompt,
    policy_for,
)


@dataclass(frozen=True)
class Verdict:
    """A guard's answer, read strictly.

    `problem` is None for a well-formed answer; otherwise it says why the answer was
    taken as unsafe (fail closed). `raw` is the guard's text exactly as it came.
    """

    safe: bool
    categories: tuple[Category, ...] = ()
    raw: str = ""
    problem: str | None = None

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(c.code for c in self.categories)

    @property
    def named(self) -> str:
        """The categories for people, as labels and refusals name them: 'S1 Violent Crimes, ...'."""
        return ", ".join(f"{c.code} {c.name}" for c in self.categories)

    @property
    def label(self) -> str:
        """One line for people: 'safe', 'unsafe: S1 Violent Crimes' or why it failed closed."""
        if self.safe:
            return "safe"
        if self.problem:
            named = f": {self.named}" if self.categories else ""
            return f"unsafe (failed closed: {self.problem}){named}"
        return f"unsafe: {self.named}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "safe": self.safe,
            "codes": list(self.codes),
            "names": [c.name for c in self.categories],
            "raw": self.raw,
            "problem": self.problem,
        }


def parse_verdict(text: str, policy: GuardPolicy = LLAMA_GUARD_3) -> Verdict:
    """Read a Llama Guard answer: 'safe', or 'unsafe' and a comma-separated code line.

    Leading and trailing whitespace is ignored (Llama Guard 3 starts with a blank line);
    anything else that is not exactly that shape is unsafe, with `problem` saying why.
    """
    if not isinstance(text, str):
        raise InputError(f"parse_verdict needs the guard's answer as text, got {text!r}.")
    lines = text.strip().split("\n")
    if lines == ["safe"]:
        return Verdict(safe=True, raw=text)
    if lines[0] != "unsafe":
        return Verdict(safe=False, raw=text, problem="not a Llama Guard verdict")
    if len(lines) == 1:
        return Verdict(safe=False, raw=text, problem="no category line after 'unsafe'")
    if len(lines) > 2:
        return Verdict(safe=False, raw=text, problem="extra lines after the category line")
    categories: list[Category] = []
    unknown: list[str] = []
    for code in (part.strip() for part in lines[1].split(",")):
        known = policy.by_code.get(code)
        if known is None:
            unknown.append(code)
            known = Category(code=code, name="unknown category", prompt_name="")
        if known not in categories:
            categories.append(known)
    problem = None
    if unknown:
        problem = f"category code(s) {', '.join(map(repr, unknown))} not in {policy.name}"
    return Verdict(safe=False, categories=tuple(categories), raw=text, problem=problem)


def verdict_grammar(policy: GuardPolicy = LLAMA_GUARD_3) -> str:
    """A GBNF grammar whose only sentences are valid verdicts for `policy`.

    Up to two leading blanks or newlines are allowed (Llama Guard 3 answers with a blank
    line first); the code list is at most as long as the policy's list of categories.
    """
    codes = [c.code for c in policy.categories]
    alternatives = " | ".join(f'"{code}"' for code in codes)
    more = len(codes) - 1
    return (
        'root ::= [ \\n]? [ \\n]? ("safe" | "unsafe" "\\n" codes)\n'
        f'codes ::= code ("," code){{0,{more}}}\n'
        f"code ::= {alternatives}\n"
    )


class Guard(Protocol):
    """Anything that judges the last message of a conversation."""

    @property
    def name(self) -> str: ...

    def judge(self, messages: list[dict[str, str]]) -> Verdict: ...


def _starts_with_bos(prompt: str, bos: str | None) -> bool:
    """Whether `prompt` already starts with BOS, so the tokenizer must not add another.

    Llama Guard 3's template writes <|begin_of_text|> itself; Llama Guard 2's does not.
    """
    return bool(bos) and prompt.lstrip().startswith(bos)


class CompletionGuard:
    """A guard model that gets the complete Llama Guard prompt and answers with text.

    The prompt already holds the model's turn header, so it is a raw completion, not a
    chat turn. Subclasses provide `complete(prompt) -> (text, finish_reason)`.
    """

    policy: GuardPolicy
    max_tokens: int

    @property
    def name(self) -> str:
        return f"{type(self).__name__} ({self.policy.name} template)"

    def prompt(self, messages: list[dict[str, str]]) -> str:
        """The guard prompt with the judged texts marked, so complete() keeps them plain:
        a '<|eot_id|>' typed by the user cannot end the prompt and answer for the guard."""
        render = partial(guard_prompt, policy=self.policy)
        return render(mark_contents(render, messages))

    def complete(self, prompt: str) -> tuple[str, str]:
        raise NotImplementedError

    def judge(self, messages: list[dict[str, str]]) -> Verdict:
        text, finish = self.complete(self.prompt(messages))
        verdict = parse_verdict(text, self.policy)
        if finish == "length":  # cut off: a longer answer might have said more
            problem = f"answer cut off at max_tokens={self.max_tokens}"
            verdict = replace(verdict, safe=False, problem=verdict.problem or problem)
        return verdict


class LlamaCppGuard(CompletionGuard):
    """A guard model on llama.cpp whose output is constrained by the verdict grammar.

    llama.cpp keeps the last prompt in its KV cache and only processes what differs from
    it. The guard template names the judged role in its first sentence, so input checks
    share their long prefix only with other input checks, and output checks with output
    checks: give each kind its own model instance (and never share one with the chat
    model) to keep both prefixes cached. `completion_kwargs` go to `create_completion`
    (e.g. logit_bias, seed).
    """

    def __init__(
        self,
        model: Any,
        policy: GuardPolicy = LLAMA_GUARD_3,
        constrain: bool = True,
        max_tokens: int = 32,
        **completion_kwargs: Any,
    ) -> None:
        from llama_cpp import LlamaGrammar

        self.model = model
        self.policy = policy
        self.max_tokens = max_tokens
        self.grammar = (
            LlamaGrammar.from_string(verdict_grammar(policy), verbose=False) if constrain else None
        )
        self.completion_kwargs = completion_kwargs

    def tokens(self, prompt: str) -> list[int]:
        """The prompt's token ids: the template's special tokens parsed, the texts plain."""
        add_bos = not _starts_with_bos(prompt, self.model.formatter.bos_token)
        return tokenize_plain(self.model.llm, prompt, add_bos)

    def complete(self, prompt: str) -> tuple[str, str]:
        """The guard's raw answer and llama.cpp's finish reason ('stop' or 'length')."""
        tokens = self.tokens(prompt)
        out = self.model.llm.create_completion(
            tokens,
            max_tokens=self.max_tokens,
            temperature=0.0,
            grammar=self.grammar,
            **self.completion_kwargs,
        )
        choice = out["choices"][0]
        return choice["text"], choice["finish_reason"]


class TransformersGuard(CompletionGuard):
    """A guard model on transformers (hf.HFModel), greedy and unconstrained.

    transformers has no grammar here, so the strict parser is the only safety net:
    an answer that is not a verdict counts as unsafe.
    """

    def __init__(self, model: Any, policy: GuardPolicy = LLAMA_GUARD_3, max_tokens: int = 32):
        self.model = model
        self.policy = policy
        self.max_tokens = max_tokens

    def complete(self, prompt: str) -> tuple[str, str]:
        """The guard's raw answer and the finish reason ('stop' or 'length')."""
        add_bos = not _starts_with_bos(prompt, self.model.tokenizer.bos_token)
        return self.model.complete(prompt, self.max_tokens, add_bos=add_bos)


def load_guard(session: Any, n_ctx: int = 2048) -> CompletionGuard:
    """The profile's guard model with the Llama Guard template it expects.

    llama.cpp roles (tiny, local-cpu, colab-l4) get the grammar; transformers roles
    (Llama Guard 3 on colab-t4 and multi-gpu) get the strict parser only.
    """
    choice = session.choice("guard")
    guard = LlamaCppGuard if choice.backend == "llamacpp" else TransformersGuard
    return guard(session.model("guard", n_ctx=n_ctx), policy_for(choice.model))


class AuditLog:
    """An append-only JSONL file: one line per decision.

    Each line goes out in ONE os.write on a descriptor opened with O_APPEND, under an
    exclusive lock, so lines from several processes never interleave. A line cut off by a
    crash (kill -9, a full disk) is closed by the next append, and the reader skips it with
    a warning: one torn line never makes the whole log unreadable.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        if path:
            self.path = Path(path)
        else:
            # Created now, empty: a second log started in the same second, in this process
            # or another, gets a name of its own.
            self.path = results.save("guard-audit", ".jsonl", lambda tmp: None)

    def append(self, record: dict[str, Any]) -> None:
        try:
            data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: written escaped, the line still goes out
            data = (json.dumps(record) + "\n").encode("ascii")
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            # Locked: without it, a writer could read the tail while another's line is
            # half-visible and "close" a line that was not torn.
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":  # a torn last line: end it
                data = b"\n" + data
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written != len(data):
            raise OSError(f"Audit log {self.path}: wrote {written} of {len(data)} bytes.")

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = []
        with self.path.open("rb") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except ValueError:  # not UTF-8 or not JSON: a torn write
                    warnings.warn(
                        f"Audit log {self.path}, line {number}: not a whole record (a write cut "
                        "off by a crash?); skipped.",
                        stacklevel=2,
                    )
        return records

    def table(self) -> pd.DataFrame:
        """The decisions as a table: one row per line of the log ("" where nothing blocked,
        "(not run)" for a check that never ran, as in `replies_table`)."""
        rows = [
            {
                "time": r["time"],
                "user": r["user"],
                "input_guard": r["input_guard"],
                "output_guard": r["output_guard"],
                "shown": r["shown"],
                "blocked_by": r["blocked_by"] or "",
                "input": r["input"]["label"],
                "output": r["output"]["label"] if r["output"] else "(not run)",
                **{f"{k}_ms": v for k, v in r["ms"].items()},
            }
            for r in self.records()
        ]
        return pd.DataFrame(rows)


@dataclass(frozen=True)
class GuardedReply:
    """What the guarded pipeline returns: the text to show and how it was decided.

    `text` is the chat model's reply only when `shown`; otherwise a refusal.
    """

    request_id: str
    user: str
    text: str
    shown: bool
    blocked_by: str | None  # "input", "output", "chat error" or None
    input_verdict: Verdict
    output_verdict: Verdict | None
    ms: dict[str, float]  # wall-clock per stage: input_check, chat, output_check, total


def refusal(stage: str, verdict: Verdict) -> str:
    """The message shown instead of a reply, naming what the guard flagged."""
    what = "your message" if stage == "input" else "the answer"
    if verdict.categories:
        return (
            f"Sorry, I can't help with this: the {stage} check flagged {what} as {verdict.named}."
        )
    return (
        f"Sorry, I can't help with this: the {stage} check gave no usable verdict on {what} "
        f"({verdict.problem}), so it is refused (fail closed)."
    )


REPLY_CHARS = 70  # of a shown reply, in replies_table


def replies_table(replies: list[GuardedReply], raw: bool = False) -> pd.DataFrame:
    """One row per reply: both verdicts, whether it was shown, and the start of its text
    (a refusal in full: it says why the request was blocked).

    With `raw`, the input check also shows the guard's raw answer (the prompt guard's
    p_harmful, say), to see how close a call was.
    """
    return pd.DataFrame(
        [
            {
                "prompt": r.user,
                "input check": (
                    f"{r.input_verdict.label} ({r.input_verdict.raw})"
                    if raw
                    else r.input_verdict.label
                ),
                "output check": r.output_verdict.label if r.output_verdict else "(not run)",
                "shown": r.shown,
                # a reply's start is enough to recognise it; a refusal is the point: whole
                "answer shown to the user": r.text[:REPLY_CHARS] if r.shown else r.text,
            }
            for r in replies
        ]
    )


def real_verdict(value: object) -> Verdict:
    """`value` when it is a well-formed Verdict; anything else is an unsafe one saying what
    came (fail closed): None, the text 'safe', a verdict whose `safe` is 'no' (truthy, so it
    would show the reply), categories that are not Category records, a safe verdict with a
    problem or categories."""
    if isinstance(value, Verdict):
        well_formed = (
            type(value.safe) is bool
            and isinstance(value.categories, tuple)
            and all(isinstance(c, Category) for c in value.categories)
            and isinstance(value.raw, str)
            and (value.problem is None or isinstance(value.problem, str))
        )
        if well_formed and not (value.safe and (value.problem or value.categories)):
            return value
    return Verdict(
        safe=False, problem=f"the guard returned {type(value).__name__} {value!r:.80}, no verdict"
    )


def _not_unicode(what: str, value: str) -> Verdict | None:
    """An unsafe verdict for text that cannot be written as UTF-8 (a lone surrogate), which no
    guard can be shown as it is; None for readable text."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        where = f"a lone surrogate at character {err.start}"
        return Verdict(safe=False, problem=f"{what} is not valid Unicode ({where}), not judged")
    return None


class GuardedChat:
    """Input check, chat model, output check; every decision appended to an audit log.

    `input_guard` judges the user's message, `output_guard` (default: the same guard)
    judges the reply with the user's message as context. A guard that raises counts
    as an unsafe verdict (fail closed); the error is kept in the verdict and the log.
    """

    def __init__(
        self,
        chat_model: Any,
        input_guard: Guard,
        output_guard: Guard | None = None,
        audit: AuditLog | None = None,
        max_tokens: int = 128,
    ) -> None:
        self.chat_model = chat_model
        self.input_guard = input_guard
        self.output_guard = output_guard or input_guard
        self.audit = audit or AuditLog()
        self.max_tokens = max_tokens

    @staticmethod
    def _check(guard: Guard, messages: list[dict[str, str]]) -> tuple[Verdict, float]:
        start = time.perf_counter()
        try:
            verdict = real_verdict(guard.judge(messages))
        except Exception as err:  # noqa: BLE001 - a broken guard must block, not crash open
            verdict = Verdict(safe=False, problem=f"guard error: {type(err).__name__}: {err}")
        return verdict, 1000 * (time.perf_counter() - start)

    def ask(self, user: str) -> GuardedReply:
        """Answer one user message through both checks; log the decision."""
        if not isinstance(user, str) or not user.strip():
            raise InputError(f"user={user!r} is not a message; pass the user's text.")
        start = time.perf_counter()
        ms: dict[str, float] = {}
        output_verdict = None
        reply = None
        if unreadable := _not_unicode("the message", user):
            input_verdict, ms["input_check"] = unreadable, 0.0
        else:
            input_verdict, ms["input_check"] = self._check(self.input_guard, conversation(user))
        if input_verdict.safe:
            t = time.perf_counter()
            try:
                response = self.chat_model.chat(
                    [{"role": "user", "content": user}], max_tokens=self.max_tokens, temperature=0.0
                )
                reply = response["choices"][0]["message"]["content"] or ""
                if not isinstance(reply, str):
                    raise TypeError(f"the reply is {type(reply).__name__} {reply!r:.60}, not text")
            except BaseException as err:  # logged, then raised: a failure leaves a trace too
                now = time.perf_counter()
                ms["chat"], ms["total"] = 1000 * (now - t), 1000 * (now - start)
                failed = GuardedReply(
                    uuid.uuid4().hex, user, "", False, "chat error", input_verdict, None, ms
                )
                self.audit.append(self._record(failed, None, f"{type(err).__name__}: {err}"))
                raise
            ms["chat"] = 1000 * (time.perf_counter() - t)
            if not reply.strip():
                output_verdict = Verdict(safe=False, problem="the chat model gave an empty reply")
            elif unreadable := _not_unicode("the reply", reply):
                output_verdict = unreadable
            else:
                judged = conversation(user, reply)
                output_verdict, ms["output_check"] = self._check(self.output_guard, judged)
        ms["total"] = 1000 * (time.perf_counter() - start)

        if not input_verdict.safe:
            blocked_by, shown_text = "input", refusal("input", input_verdict)
        elif not output_verdict.safe:
            blocked_by, shown_text = "output", refusal("output", output_verdict)
        else:
            blocked_by, shown_text = None, reply
        result = GuardedReply(
            request_id=uuid.uuid4().hex,
            user=user,
            text=shown_text,
            shown=blocked_by is None,
            blocked_by=blocked_by,
            input_verdict=input_verdict,
            output_verdict=output_verdict,
            ms=ms,
        )
        self.audit.append(self._record(result, reply))
        return result

    def _record(
        self, result: GuardedReply, reply: str | None, error: str | None = None
    ) -> dict[str, Any]:
        def verdict(v: Verdict | None) -> dict[str, Any] | None:
            return None if v is None else {**v.as_dict(), "label": v.label}

        return {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "request_id": result.request_id,
            "input_guard": self.input_guard.name,
            "output_guard": self.output_guard.name,
            "user": result.user,
            "shown": result.shown,
            "blocked_by": result.blocked_by,
            "input": verdict(result.input_verdict),
            "output": verdict(result.output_verdict),
            "reply_chars": None if reply is None else len(reply),
            "reply_sha256": None
            if reply is None
            else hashlib.sha256(reply.encode("utf-8", "surrogatepass")).hexdigest(),
            "ms": {k: round(v, 1) for k, v in result.ms.items()},
            "error": error,
        }
