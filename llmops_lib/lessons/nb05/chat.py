"""Multi-turn chat that re-sends its history every turn and never overflows the context.

A chat model has no memory: each turn the whole conversation (system prompt, earlier
turns, the new message) is sent again as one prompt, so the prompt, and the cost of a
turn, grows with the history until it no longer fits the context window. A
`Conversation` counts tokens with the model's own tokenizer before each turn and drops
the oldest whole turns to make room, so a chat of any length keeps running, and it
records per turn what that cost.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd

from ...core import errors, results
from ...core.backend import LocalModel, check_chat_args, reply_text
from ...core.errors import InputError

CONVERSATION = results.Kind("conversation", ".json", "05", "a saved conversation")

FORMAT = "llmops-conversation/1"


class MessageTooLong(InputError):
    """One message that cannot fit even with the whole history dropped."""

    def __init__(self, tokens: int, fits: int, detail: str) -> None:
        self.tokens = tokens
        self.fits = fits
        super().__init__(detail)


@dataclass
class Turn:
    """One exchange and what it cost.

    prompt_tokens is the full prompt the model was given; evaluated_tokens is the part
    the engine actually computed (llama.cpp reuses the cached prefix of the previous
    prompt). generated_tokens counts the reply with the model's tokenizer; decoded_tokens
    and decode_ms are the engine's own counters for the one-token-at-a-time phase, whose
    ratio is the decode speed. ttft_s is measured when streaming; for ask() it is the wall
    time minus the engine's decode time, i.e. when the first token existed.
    """

    user: str
    assistant: str
    prompt_tokens: int
    evaluated_tokens: int
    prefill_ms: float
    generated_tokens: int
    decoded_tokens: int
    decode_ms: float
    ttft_s: float
    total_s: float
    history_turns: int
    streamed: bool
    dropped: list[int] = field(default_factory=list)  # turn numbers dropped before this turn


class Conversation:
    """A system prompt plus turn history, sent to a chat model within its context window."""

    def __init__(
        self,
        model: LocalModel,
        system: str,
        max_tokens: int = 256,
        temperature: float = 0.0,
    ) -> None:
        check_chat_args([{"role": "system", "content": system}], max_tokens, temperature)
        if not system.strip():
            raise InputError(
                "system prompt is empty; pass the instructions the model should follow."
            )
        self.model = model
        self.system = system
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.turns: list[Turn] = []  # every turn ever, dropped ones included (for the figures)
        self.first_kept = 0  # turns[first_kept:] is the history still sent to the model
        self.last_response: dict[str, Any] | None = None
        frame = self._frame_tokens()
        if frame + max_tokens > model.n_ctx:
            raise InputError(
                f"The system prompt takes {frame} tokens and the reply budget max_tokens="
                f"{max_tokens}: together more than the context n_ctx={model.n_ctx}. Shorten "
                "the system prompt, lower max_tokens or load the model with a larger n_ctx."
            )

    @property
    def history(self) -> list[Turn]:
        """The turns still sent to the model, oldest first."""
        return self.turns[self.first_kept :]

    @property
    def dropped(self) -> list[Turn]:
        """The turns dropped to make room, oldest first."""
        return self.turns[: self.first_kept]

    @property
    def messages(self) -> list[dict[str, str]]:
        """System prompt and kept history as chat messages (what the next turn builds on)."""
        return self._messages(self.first_kept)

    def _messages(self, first: int) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": self.system}]
        for turn in self.turns[first:]:
            messages.append({"role": "user", "content": turn.user})
            messages.append({"role": "assistant", "content": turn.assistant})
        return messages

    def _frame_tokens(self) -> int:
        """Tokens of the system prompt plus the empty user turn's markers."""
        return self.model.count_tokens(
            [{"role": "system", "content": self.system}, {"role": "user", "content": ""}]
        )

    def _fit(self, text: str) -> tuple[list[dict[str, str]], int, int]:
        """Messages for the next turn within n_ctx - max_tokens, dropping oldest whole turns.

        Returns the messages, their token count and the new first kept turn; nothing is
        changed here, so a failed turn leaves the history as it was.
        """
        if not errors.text("text", text).strip():
            raise InputError(f"text={text!r} is not a message; pass what the user says.")
        new = {"role": "user", "content": text}
        limit = self.model.n_ctx - self.max_tokens
        alone = self.model.count_tokens([{"role": "system", "content": self.system}, new])
        if alone > limit:
            frame = self._frame_tokens()
            tokens, fits = alone - frame, limit - frame
            raise MessageTooLong(
                tokens,
                fits,
                f"The message has {tokens} tokens, but at most {fits} fit: the context "
                f"n_ctx={self.model.n_ctx} minus max_tokens={self.max_tokens} for the reply "
                f"minus {frame} for the system prompt and turn markers. Shorten the message, "
                "or use a larger n_ctx or a smaller max_tokens.",
            )
        first = self.first_kept
        while True:
            messages = self._messages(first) + [new]
            tokens = self.model.count_tokens(messages)
            if tokens <= limit:
                return messages, tokens, first
            first += 1  # cannot pass len(turns): the message alone fits

    def _reply_tokens(self, messages: list[dict[str, str]], reply: str) -> int:
        """Tokens of `reply` as the model's tokenizer counts it inside the chat template."""
        with_reply = messages + [{"role": "assistant", "content": reply}]
        empty = messages + [{"role": "assistant", "content": ""}]
        return self.model.count_tokens(with_reply) - self.model.count_tokens(empty)

    def _record(
        self,
        messages: list[dict[str, str]],
        reply: str,
        prompt_tokens: int,
        first: int,
        **figures: Any,
    ) -> None:
        t = self.model.timings()
        dropped = list(range(self.first_kept + 1, first + 1))
        self.first_kept = first
        self.turns.append(
            Turn(
                user=messages[-1]["content"],
                assistant=reply,
                prompt_tokens=prompt_tokens,
                evaluated_tokens=t.prompt_tokens,
                prefill_ms=t.prompt_ms,
                generated_tokens=self._reply_tokens(messages, reply),
                decoded_tokens=t.generated_tokens,
                decode_ms=t.generated_ms,
                history_turns=len(self.turns) - first,
                dropped=dropped,
                **figures,
            )
        )

    def ask(self, text: str) -> str:
        """Send `text` with the history, return the reply and add the turn to the history."""
        messages, tokens, first = self._fit(text)
        start = time.perf_counter()
        response = self.model.chat(
            messages, max_tokens=self.max_tokens, temperature=self.temperature, stream=False
        )
        total = time.perf_counter() - start
        reply = reply_text(response)
        self.last_response = response
        decode_s = self.model.timings().generated_ms / 1000
        self._record(
            messages, reply, tokens, first, ttft_s=total - decode_s, total_s=total, streamed=False
        )
        return reply

    def stream(self, text: str, echo: bool = True) -> Iterator[str]:
        """Yield the reply piece by piece as it is generated; with echo, also print it live.

        Like a chat UI: the role first, then each piece as it arrives. The turn
        joins the history once the reply is complete.
        """
        messages, tokens, first = self._fit(text)
        start = time.perf_counter()
        ttft = None
        parts = []
        chunks = self.model.chat(
            messages, max_tokens=self.max_tokens, temperature=self.temperature, stream=True
        )
        for chunk in chunks:
            delta = chunk["choices"][0].get("delta", {})
            if echo and "role" in delta:
                print(f"{delta['role']}: ", end="", flush=True)
            piece = delta.get("content") or ""
            if piece:
                if ttft is None:
                    ttft = time.perf_counter() - start
                parts.append(piece)
                if echo:
                    print(piece, end="", flush=True)
                yield piece
        total = time.perf_counter() - start
        if echo:
            print()
        self._record(
            messages,
            "".join(parts),
            tokens,
            first,
            ttft_s=total if ttft is None else ttft,
            total_s=total,
            streamed=True,
        )

    def figures(self) -> pd.DataFrame:
        """One row per turn: history sent, tokens, time to first token, speed, and whether
        the reply used its whole max_tokens budget (then it was most likely cut off)."""
        rows = [
            {
                "turn": n,
                "history_turns": t.history_turns,
                "dropped": len(t.dropped),
                "prompt_tokens": t.prompt_tokens,
                "evaluated_tokens": t.evaluated_tokens,
                "generated_tokens": t.generated_tokens,
                "ttft_s": t.ttft_s,
                "tokens_per_s": 1000 * t.decoded_tokens / t.decode_ms
                if t.decode_ms
                else float("nan"),
                "total_s": t.total_s,
                # the reply filled its whole budget: it was cut off, not ended by the model
                # (llama.cpp's own count is one short there: the last token is never fed back)
                "hit_max_tokens": t.generated_tokens >= self.max_tokens,
            }
            for n, t in enumerate(self.turns, start=1)
        ]
        columns = ["turn", "history_turns", "dropped", "prompt_tokens", "evaluated_tokens"]
        columns += ["generated_tokens", "ttft_s", "tokens_per_s", "total_s", "hit_max_tokens"]
        return pd.DataFrame(rows, columns=columns).set_index("turn")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "system": self.system,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "first_kept": self.first_kept,
            "turns": [asdict(t) for t in self.turns],
        }

    def save(self, path: str | Path | None = None) -> Path:
        """Write the conversation as JSON, atomically, never over an existing file.

        Without a path it goes to a new timestamped file in results/.
        """
        text = json.dumps(self.to_dict(), ensure_ascii=False, indent=1, allow_nan=False)

        def write(tmp: Path) -> None:
            tmp.write_text(text, encoding="utf-8")

        if path is None:
            return CONVERSATION.save(write)
        path = Path(path)
        if path.exists():
            raise FileExistsError(
                f"{str(path)!r} exists; save() never overwrites an earlier conversation. "
                "Pick a new name, or call save() without a path for a timestamped one."
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        return results.write_atomic(path, write)

    @classmethod
    def load(cls, path: str | Path, model: LocalModel) -> Conversation:
        """Read a conversation saved with save() and continue it on `model`.

        Every field is checked, so a damaged or hand-edited file is named here, not when a
        later turn or figure trips over it.
        """
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as err:
            raise InputError(
                f"{str(path)!r} cannot be read as a saved conversation ({err}); pass a file "
                "written by Conversation.save()."
            ) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise InputError(
                f"{str(path)!r} is not a saved conversation (format {found!r}, expected "
                f"{FORMAT!r}); pass a file written by Conversation.save()."
            )
        missing = {"system", "max_tokens", "temperature", "first_kept", "turns"} - set(data)
        if missing or not isinstance(data["turns"], list):
            raise InputError(
                f"{str(path)!r} is a damaged conversation: "
                + (f"it lacks {sorted(missing)}." if missing else "its turns are not a list.")
            )
        conv = cls(model, data["system"], data["max_tokens"], data["temperature"])
        conv.turns = [_turn(path, i, t) for i, t in enumerate(data["turns"])]
        first = data["first_kept"]
        if (
            isinstance(first, bool)
            or not isinstance(first, int)
            or not 0 <= first <= len(conv.turns)
        ):
            raise InputError(
                f"{str(path)!r} is a damaged conversation: first_kept={first!r}, but it has "
                f"{len(conv.turns)} turns."
            )
        conv.first_kept = first
        return conv


# What each Turn field holds in a saved file (JSON has no tuples; floats may be whole).
_FIELD_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,)}


def _turn(path: str | Path, index: int, saved: object) -> Turn:
    """One saved turn, each field of the type Turn gives it; InputError naming the field."""
    names = [f.name for f in fields(Turn)]
    where = f"{str(path)!r} is a damaged conversation: turns[{index}]"
    if not isinstance(saved, dict) or set(saved) != set(names):
        raise InputError(f"{where} does not have exactly the fields {', '.join(names)}.")
    for f in fields(Turn):
        value = saved[f.name]
        if f.type == "list[int]":
            good = isinstance(value, list) and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value
            )
        else:
            kinds = _FIELD_TYPES[f.type]
            good = isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))
        if not good:
            raise InputError(f"{where}[{f.name!r}] is {value!r:.40}, not {f.type}.")
    return Turn(**saved)
