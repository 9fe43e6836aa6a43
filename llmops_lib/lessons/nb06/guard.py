"""The guard model: the Llama Guard prompt, completed by the profile's guard on any engine.

One class for every engine: it asks the engine contract's `complete()` for the answer to
the finished Llama Guard prompt, with the verdict grammar where the engine obeys one, and
reads the answer strictly (verdicts.parse_verdict) either way.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any, Protocol

from ...core.backend import LocalModel
from ...core.plain_text import mark_contents
from .guard_prompts import LLAMA_GUARD_3, GuardPolicy, guard_prompt, policy_for
from .verdicts import Verdict, parse_verdict, verdict_grammar


class Guard(Protocol):
    """Anything that judges the last message of a conversation."""

    @property
    def name(self) -> str: ...

    def judge(self, messages: list[dict[str, str]]) -> Verdict: ...


class ModelGuard:
    """A guard model that gets the complete Llama Guard prompt and answers with text.

    The prompt already holds the model's turn header, so it is a raw completion
    (`complete()` of the engine contract), not a chat turn. Where the engine obeys grammars
    (llama.cpp) the verdict grammar makes any other answer impossible; elsewhere
    (transformers) the strict parser is the only net, and an answer that is not a verdict
    counts as unsafe.

    llama.cpp keeps the last prompt in its KV cache and only processes what differs from
    it, and so does the transformers engine. The guard template names the judged role in
    its first sentence, so input checks share their long prefix only with other input
    checks, and output checks with output checks: give each kind its own model instance
    (and never share one with the chat model) to keep both prefixes cached.
    """

    def __init__(
        self,
        model: LocalModel,
        policy: GuardPolicy = LLAMA_GUARD_3,
        constrain: bool = True,
        max_tokens: int = 32,
    ) -> None:
        self.model = model
        self.policy = policy
        self.max_tokens = max_tokens
        self.grammar = verdict_grammar(policy) if constrain else None

    @property
    def constrained(self) -> bool:
        """Whether the grammar holds the answers to verdicts (not on every engine)."""
        return self.grammar is not None and self.model.grammars

    @property
    def name(self) -> str:
        how = "grammar" if self.constrained else "parser only"
        return f"{self.model.path.name} ({self.policy.name} template, {how})"

    def prompt(self, messages: list[dict[str, str]]) -> str:
        """The guard prompt with the judged texts marked, so complete() keeps them plain:
        a '<|eot_id|>' typed by the user cannot end the prompt and answer for the guard."""
        render = partial(guard_prompt, policy=self.policy)
        return render(mark_contents(render, messages))

    def complete(self, prompt: str) -> tuple[str, str]:
        """The guard's raw answer and its finish reason ('stop' or 'length')."""
        return self.model.complete(prompt, self.max_tokens, grammar=self.grammar)

    def judge(self, messages: list[dict[str, str]]) -> Verdict:
        text, finish = self.complete(self.prompt(messages))
        verdict = parse_verdict(text, self.policy)
        if finish == "length":  # cut off: a longer answer might have said more
            problem = f"answer cut off at max_tokens={self.max_tokens}"
            verdict = replace(verdict, safe=False, problem=verdict.problem or problem)
        return verdict


def load_guard(session: Any, n_ctx: int = 2048) -> ModelGuard:
    """The profile's guard model with the Llama Guard template it expects: with the grammar
    on llama.cpp roles (tiny, local-cpu, colab-l4), the strict parser only on transformers
    ones (Llama Guard 3 on colab-t4 and multi-gpu)."""
    return ModelGuard(session.model("guard", n_ctx=n_ctx), policy_for(session.spec("guard").key))
