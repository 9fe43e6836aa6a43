"""A Llama Guard answer read strictly, so that anything but a verdict fails closed.

The guard is itself an LLM: it answers with text, and text can be anything. So the
verdict is read strictly: `safe`, or `unsafe` plus one line of known category codes;
every other answer counts as unsafe (fail closed) and keeps the raw text for the audit.
Where the engine obeys grammars (llama.cpp) a GBNF grammar goes further and makes any
other answer impossible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...core.errors import InputError
from .guard_prompts import LLAMA_GUARD_3, Category, GuardPolicy


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
