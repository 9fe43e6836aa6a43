"""Keep message contents plain text when a chat template is tokenized: no forged turns.

A chat template writes control tokens (`<|im_start|>`, `<|eot_id|>`) around each message,
and engines tokenize the rendered prompt with special-token parsing on. A user who types
`<|im_end|>` would then close their own turn and could write the assistant's. So each
content is marked in the rendered prompt, and the engines tokenize the template's text with
special tokens parsed and the marked contents as plain text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from .errors import InputError

# Marks each message's content in a rendered prompt. A private-use character: no template
# writes it; one typed in a message is dropped.
PLAIN = "\ue000"


def mark_contents(
    render: Callable[[list[dict[str, str]]], str], messages: list[dict[str, str]]
) -> list[dict[str, str]]:
    """`messages` with each content between PLAIN marks, for a prompt that `render` builds.

    Checked: without the marks the prompt is exactly what `render` makes of the messages.
    A template that trims contents gets them trimmed inside the marks; one that changes
    contents otherwise cannot keep them plain, which is an error rather than a silent risk.
    """
    clean = [
        {**m, "content": m["content"].replace(PLAIN, "")}
        if isinstance(m.get("content"), str)
        else m
        for m in messages
    ]
    expected = render(clean)
    for trim in (False, True):
        marked = [
            {**m, "content": PLAIN + (m["content"].strip() if trim else m["content"]) + PLAIN}
            for m in clean
        ]
        if render(marked).replace(PLAIN, "") == expected:
            return marked
    raise InputError(
        "The chat template changes message contents, so they cannot be tokenized as plain "
        "text (a user could type control tokens such as <|im_end|>); use another template."
    )


def pieces(prompt: str) -> Iterator[tuple[str, bool]]:
    """The non-empty pieces of a marked prompt, each with whether it is a message content."""
    for i, piece in enumerate(prompt.split(PLAIN)):
        if piece:
            yield piece, i % 2 == 1


def tokenize_marked(
    prompt: str, tokenize: Callable[[str, bool, bool], list[int]], add_bos: bool
) -> list[int]:
    """Token ids of a marked prompt: `tokenize(text, add_bos, special)` for each piece,
    special-token parsing on for the template's text and off for the contents."""
    tokens: list[int] = []
    for piece, content in pieces(prompt):
        tokens += tokenize(piece, add_bos and not tokens, not content)
    return tokens


def writes_bos(prompt: str, bos: str | None) -> bool:
    """Whether a finished prompt already starts with BOS, so its tokenizer must not add a
    second one (Llama Guard 3's template writes <|begin_of_text|> itself; 2's does not)."""
    return bool(bos) and prompt.lstrip().startswith(bos)
