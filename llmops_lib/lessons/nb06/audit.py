"""The guard pipeline's audit log: one JSON line per decision, safe to share between
processes and readable after a crash."""

from __future__ import annotations

import fcntl
import json
import os
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from ...core import results

AUDIT = results.Kind("guard-audit", ".jsonl", "06", "guard overhead")  # one log per AuditLog()


class AuditLog:
    """An append-only JSONL file: one line per decision.

    Each line goes out in ONE os.write on a descriptor opened with O_APPEND, under an
    exclusive lock, so lines from several processes never interleave. A line cut off by a
    crash (kill -9, a full disk) is closed by the next append, and the reader skips it with
    a warning: one torn line never makes the whole log unreadable.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        if path:
            self.path = Path(path)
        else:
            # Created now, empty: a second log started in the same second, in this process
            # or another, gets a name of its own.
            self.path = AUDIT.save(lambda tmp: None)

    def append(self, record: dict[str, Any]) -> None:
        try:
            data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: written escaped, the line still goes out
            data = (json.dumps(record) + "\n").encode("ascii")
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            # Locked: without it, a writer could read the tail while another's line is
            # half-visible and "close" a line that was not torn.
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":  # a torn last line: end it
                data = b"\n" + data
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written != len(data):
            raise OSError(f"Audit log {self.path}: wrote {written} of {len(data)} bytes.")

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = []
        with self.path.open("rb") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except ValueError:  # not UTF-8 or not JSON: a torn write
                    warnings.warn(
                        f"Audit log {self.path}, line {number}: not a whole record (a write cut "
                        "off by a crash?); skipped.",
                        stacklevel=2,
                    )
        return records

    def table(self) -> pd.DataFrame:
        """The decisions as a table: one row per line of the log ("" where nothing blocked,
        "(not run)" for a check that never ran, as in `replies_table`)."""
        rows = [
            {
                "time": r["time"],
                "user": r["user"],
                "input_guard": r["input_guard"],
                "output_guard": r["output_guard"],
                "shown": r["shown"],
                "blocked_by": r["blocked_by"] or "",
                "input": r["input"]["label"],
                "output": r["output"]["label"] if r["output"] else "(not run)",
                **{f"{k}_ms": v for k, v in r["ms"].items()},
            }
            for r in self.records()
        ]
        return pd.DataFrame(rows)
