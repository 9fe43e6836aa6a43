"""The library's own error for a name it does not know, so every registry fails alike."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError):
    """A model, profile, role, precision or tool name that the library does not know."""


def lookup(table: Mapping[str, T], name: str, what: str, hint: str = "") -> T:
    """`table[name]`, or an UnknownNameError that lists the valid names (and a hint)."""
    try:
        return table[name]
    except (KeyError, TypeError):
        raise unknown(name, what, table, hint) from None


def unknown(name: object, what: str, valid: Iterable[str], hint: str = "") -> UnknownNameError:
    """The error for an unknown `what` called `name`, listing the valid ones."""
    message = f"Unknown {what} {name!r}. Valid: {', '.join(valid)}."
    return UnknownNameError(f"{message} {hint}".strip())
