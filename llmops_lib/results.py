"""Write results atomically, with a timestamp, never over an earlier run."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

RESULTS_DIR = Path(os.environ.get("LLMOPS_RESULTS", "results"))


def new_path(stem: str, suffix: str, directory: str | Path | None = None) -> Path:
    """A fresh `stem-YYYYmmdd-HHMMSS[-n].suffix` path that no earlier run has used."""
    folder = Path(directory or RESULTS_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = folder / f"{stem}-{stamp}{suffix}"
    n = 1
    while path.exists():
        path = folder / f"{stem}-{stamp}-{n}{suffix}"
        n += 1
    return path


def write_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then move it into place.

    Readers see either no file or the complete file; an existing file is never replaced.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.link(tmp, path)  # fails if `path` appeared meanwhile: never overwrite
    finally:
        os.unlink(tmp)
    return path


def write_atomic_dir(path: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temporary folder beside `path`, then rename it into place.

    Readers see either no folder or the complete one. An existing folder is never replaced:
    FileExistsError (for a cache: another process finished the same work first).
    """
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
    tmp.chmod(0o755)  # mkdtemp makes it private; results and caches are read by others too
    try:
        write(tmp)
        if path.exists():
            raise FileExistsError(f"{path} exists already; it is never replaced.")
        try:
            os.rename(tmp, path)
        except OSError as err:  # appeared meanwhile (a non-empty folder cannot be replaced)
            raise FileExistsError(f"{path} exists already; it is never replaced.") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def save_text(
    text: str, stem: str, suffix: str = ".txt", directory: str | Path | None = None
) -> Path:
    """Save `text` to a new timestamped file in results/ and return its path."""
    path = new_path(stem, suffix, directory)
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
