"""The guarded chat: input check, chat model, output check, each decision in the audit log.

The pipeline checks the user's message (input check), asks the chat model, then checks
the reply in the context of the user's message (output check). The reply is shown only
when both verdicts are safe; a blocked reply never leaves the pipeline, not even in the
audit log, which records a hash of it instead. A guard that raises or returns anything
but a well-formed verdict counts as unsafe (fail closed).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from ...core.errors import InputError
from .audit import AuditLog
from .guard import Guard
from .guard_prompts import conversation
from .verdicts import Verdict, real_verdict


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
