"""One progress-bar style for the course: a few redraws per bar, not one per step.

A notebook stores every redraw of a bar as output; a bar that redraws on each of 100
steps turns the stored notebook into a wall of frames. Redrawing about every quarter of
the work still tells a person that something is happening and how far it got.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

REDRAWS = 4  # updates drawn per bar, besides its first and last frame


def bar(
    iterable: Iterable[Any] | None = None,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    disable: bool = False,
) -> tqdm:
    """A tqdm bar over `iterable` (or of `total` steps) that redraws about REDRAWS times."""
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    every = max(1, (total or 0) // REDRAWS)
    # maxinterval=inf: tqdm's monitor thread would otherwise drop miniters to 1 after 10 s
    # without a redraw, and a slow bar would redraw on every step again.
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        disable=disable,
        miniters=every,
        mininterval=0,
        maxinterval=float("inf"),
    )
