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


class _Bar(tqdm):
    """tqdm, flushed after its closing newline.

    tqdm writes that newline without a flush, so in a notebook it arrives after whatever
    the cell prints next and is stored as a stray empty stderr output of its own.
    """

    def close(self) -> None:
        super().close()
        fp = getattr(self, "fp", None)
        if fp is not None and not getattr(fp, "closed", False):
            fp.flush()


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
    return _Bar(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        disable=disable,
        miniters=every,
        mininterval=0,
        maxinterval=float("inf"),
    )
