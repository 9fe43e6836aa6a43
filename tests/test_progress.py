"""The course's progress bar: its closing newline is flushed with it."""

from __future__ import annotations

import io
import sys

from llmops_lib.core.progress import bar


class Recorder(io.StringIO):
    """A stream that remembers what had been written at its last flush."""

    flushed = ""

    def flush(self) -> None:
        self.flushed = self.getvalue()


def test_a_closed_bar_has_flushed_its_last_newline(monkeypatch):
    # Unflushed, the newline reaches a notebook after the cell's next print: a stray output.
    stream = Recorder()
    monkeypatch.setattr(sys, "stderr", stream)  # tqdm's default stream, read when a bar starts
    for _ in bar(range(3), desc="work"):
        pass
    assert stream.getvalue().endswith("\n")
    assert stream.flushed == stream.getvalue()
