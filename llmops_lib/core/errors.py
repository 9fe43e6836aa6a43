"""The library's own errors, and the checks that raise them, so every bad input fails alike.

`InputError` is a ValueError that names the argument, what it got and what it needs; a
caller (or a property test) can tell it from a bug deep inside, which would surface as a
bare TypeError, KeyError or ZeroDivisionError. The number checks live here, once, because
sizes, counts and fractions reach every layer.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

T = TypeVar("T")


class InputError(ValueError):
    """An argument the library cannot use: wrong type, out of range, empty, malformed."""


class PrecisionError(InputError):
    """A precision this machine cannot run, or a model that does not fit; says what would."""


class UnknownNameError(InputError):
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


def whole(name: str, value: object, minimum: int = 1) -> int:
    """`value` when it is a whole number >= `minimum`; True/False and 2.0 are refused.

    Why refuse bools: in Python True == 1, so `users=(True,)` would quietly mean one user.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InputError(f"{name}={value!r}: needs a whole number >= {minimum}.")
    return int(value)


def real(
    name: str, value: object, needs: str, within: Callable[[float], bool], fix: str = ""
) -> float:
    """`value` as a float when it is a finite number for which `within` holds; else an
    InputError that names it, says what it `needs` and, where given, how to `fix` it."""
    is_real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (is_real and math.isfinite(value) and within(value)):
        raise InputError(f"{name}={value!r}: needs {needs}. {fix}".strip())
    return float(value)


def positive(name: str, value: object) -> float:
    """`value` as a float when it is a finite number > 0 (a size, a bandwidth, seconds)."""
    return real(name, value, "a finite number > 0", lambda x: x > 0)


def fraction(name: str, value: object) -> float:
    """`value` as a float when it is a finite number in [0, 1] (a threshold, a share)."""
    return real(name, value, "a number between 0 and 1", lambda x: 0 <= x <= 1)


def non_empty(name: str, values: object) -> tuple:
    """`values` as a tuple when it is a non-empty sequence (a list, tuple, range).

    A bare string is refused: it would be read letter by letter, 'T4' as 'T' and '4'.
    """
    if not isinstance(values, Sequence) or isinstance(values, (str, bytes)) or not values:
        raise InputError(f"{name}={values!r}: needs a non-empty list or tuple.")
    return tuple(values)


def text(name: str, value: object) -> str:
    """`value` when it is a str that can be written as UTF-8.

    A lone surrogate ('\\ud800', which JSON and Python allow) is refused here: tokenizers,
    hashes and log files all encode their text, and each would fail somewhere deep inside.
    """
    if not isinstance(value, str):
        raise InputError(f"{name} is {type(value).__name__} {value!r:.60}, not text (str).")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InputError(
            f"{name} is not valid Unicode: a lone surrogate {value[err.start]!r} at character "
            f"{err.start}; pass text that can be written as UTF-8."
        ) from None
    return value


def texts(name: str, values: object) -> list[str]:
    """`values` as a non-empty list of `text`s (any iterable: a list, a pandas Series).

    A bare string is refused: it would be read letter by letter, one text per character.
    """
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise InputError(
            f"{name} must be a list of texts, got {type(values).__name__} {values!r:.60}."
        )
    items = list(values)
    if not items:
        raise InputError(f"{name} is empty; pass at least one text.")
    return [text(f"{name}[{i}]", item) for i, item in enumerate(items)]


def check_columns(name: str, frame: object, columns: Sequence[str]) -> None:
    """Refuse anything but a table (pandas DataFrame) that has all of `columns`."""
    have = getattr(frame, "columns", None)
    missing = [c for c in columns if have is None or c not in have]
    if missing:
        raise InputError(
            f"{name} needs a table (pandas DataFrame) with the columns "
            f"{', '.join(map(str, columns))}; got a {type(frame).__name__} without "
            f"{', '.join(map(str, missing))}."
        )


class EndpointError(RuntimeError):
    """An endpoint did not answer or refused a request; the message names the URL."""

    def __init__(self, message: str, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
