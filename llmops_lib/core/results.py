"""The one way to save a result: a new timestamped name, written atomically.

- `save(stem, suffix, write)`: one file; `write(tmp)` fills a temporary file beside it.
- `save_frame(df, stem, formats)`: a table in one or more formats under one timestamp.
- `save_dir(stem, write)`: a folder (a saved model); `write(tmp)` fills a temporary folder.

A result is named `stem-YYYYmmdd-HHMMSS[-n]suffix` in results/ (or `directory`); a save in
the same second as another, in this process or another, takes the next free `-n`. It appears
whole or not at all and never replaces an earlier file. Temporary files are removed when a
write fails or is interrupted, and those of a killed process on the next save in the folder;
a temporary whose writer still holds its lock (a container sharing the folder, whose process
ids mean nothing here) is never removed.
`write_atomic` and `write_atomic_dir` do the same for a name the caller chose; `replacing`
is the one way to rewrite a file in place (a notebook, a cached archive, a download).

A `Kind` is one kind of result, declared once beside the lesson that writes it: its stem,
the suffix readers look for, the notebook that writes it and what it holds. The notebook
saves through it (`kind.save_frame(df)`) and the wrap-up finds it through it
(`kind.newest()`), so writer and reader cannot spell the name two ways.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from .errors import InputError

if TYPE_CHECKING:
    import pandas as pd

RESULTS_DIR = Path(os.environ.get("LLMOPS_RESULTS", "results"))

# Temporaries are hidden and carry their writer's process id: `.<stem>.tmp<pid>-<random>`.
_TMP = re.compile(r"^\..*\.tmp(\d+)-[^.]+")
# How save_frame writes each format (pandas picks the Excel engine from the suffix).
_FRAME_WRITERS: dict[str, Callable[[pd.DataFrame, Path, bool], None]] = {
    ".csv": lambda df, path, index: df.to_csv(path, index=index),
    ".xlsx": lambda df, path, index: df.to_excel(path, index=index),
}


@dataclass(frozen=True)
class Kind:
    """One kind of results file: what its writer and its readers both go by.

    `suffix` is the format readers take (a table may be saved in more: `formats`);
    `notebook` is the number of the notebook that writes it, e.g. "07".
    """

    stem: str
    suffix: str
    notebook: str
    what: str  # what it holds, for a reader's message when there is none yet
    formats: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_stem(self.stem)
        _check_suffixes((self.suffix, *self.formats))

    def save(self, write: Callable[[Path], None], directory: str | Path | None = None) -> Path:
        """`save(stem, suffix, write)` under this kind's name."""
        return save(self.stem, self.suffix, write, directory)

    def save_frame(
        self, df: pd.DataFrame, directory: str | Path | None = None, index: bool = True
    ) -> list[Path]:
        """`save_frame` under this kind's name, in its suffix and any other `formats`."""
        return save_frame(df, self.stem, (*self.formats, self.suffix), directory, index)

    def newest(self, directory: str | Path | None = None) -> Path | None:
        """The newest file of this kind in results/ (or `directory`), None if there is none."""
        return newest(self.stem, self.suffix, directory)


def save(
    stem: str, suffix: str, write: Callable[[Path], None], directory: str | Path | None = None
) -> Path:
    """Call `write(tmp)` on a temporary file, then publish it under a new timestamped name.

    E.g. `save("bench", ".json", lambda tmp: tmp.write_text(text))`; returns the path.
    """
    return _save_files(stem, {suffix: write}, directory)[0]


def save_frame(
    df: pd.DataFrame,
    stem: str,
    formats: Sequence[str] = (".csv",),
    directory: str | Path | None = None,
    index: bool = True,
) -> list[Path]:
    """Save a table in each of `formats` (.csv, .xlsx) under one name; one path per format.

    The files appear together or not at all: if one cannot be written, none is kept.
    """
    if not hasattr(df, "to_csv"):
        raise TypeError(f"save_frame needs a pandas DataFrame, got {type(df).__name__}.")
    unknown = [f for f in formats if f not in _FRAME_WRITERS]
    if unknown or not formats or len(set(formats)) != len(formats):
        raise InputError(
            f"save_frame formats {tuple(formats)!r}: give each of "
            f"{', '.join(_FRAME_WRITERS)} at most once, at least one."
        )
    writers = {f: (lambda tmp, f=f: _FRAME_WRITERS[f](df, tmp, index)) for f in formats}
    return _save_files(stem, writers, directory)


def save_dir(stem: str, write: Callable[[Path], None], directory: str | Path | None = None) -> Path:
    """Call `write(tmp)` on a temporary folder, then rename it to a new timestamped name."""
    _check_name(stem, {"": write})
    folder = _folder(directory)
    names = _names(stem)
    with _temporary_dir(folder, stem) as tmp:
        write(tmp)
        path = folder / next(names)
        while path.exists() or not _rename_new(tmp, path):
            path = folder / next(names)
    return path


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then link it to `path`.

    For a name the caller chose: FileExistsError if `path` exists, it is never replaced.
    """
    path = Path(path)
    _remove_dead_temporaries(path.parent)
    with _temporaries(path.parent, path.stem, [path.suffix]) as temps:
        write(temps[path.suffix])
        os.link(temps[path.suffix], path)  # fails if `path` exists: never overwrite
    return path


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """`path` + ".part" for the block to fill, renamed over `path` when the block ends
    without an error and removed when it raises: readers see the old file or the new one,
    never half of one. Unlike the results, this replaces; for files rewritten in place
    (notebooks, a cache, a download), which no lock can guard on a mounted Drive."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    try:
        yield part
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


def write_atomic_dir(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temporary folder beside `path`, then rename it to `path`.

    Readers see either no folder or the complete one. An existing folder is never replaced:
    FileExistsError (for a cache: another process finished the same work first).
    """
    path = Path(path)
    _remove_dead_temporaries(path.parent)
    with _temporary_dir(path.parent, path.name) as tmp:
        write(tmp)
        if path.exists() or not _rename_new(tmp, path):
            raise FileExistsError(f"{path} exists already; it is never replaced.")
    return path


def _save_files(
    stem: str, writers: dict[str, Callable[[Path], None]], directory: str | Path | None
) -> list[Path]:
    """Files of one result, one per {suffix: write}, under one new name; all or none."""
    _check_name(stem, writers)
    folder = _folder(directory)
    names = _names(stem)
    with _temporaries(folder, stem, list(writers)) as temps:
        for suffix, write in writers.items():
            write(temps[suffix])
        while not (linked := _link_all(temps, folder, next(names))):
            pass  # a name taken (by another save in the same second): the next one
    return linked


def _check_name(stem: str, writers: dict[str, Callable[[Path], None]]) -> None:
    _check_stem(stem)
    _check_suffixes(writers)
    for write in writers.values():
        if not callable(write):
            raise TypeError(
                f"write must be a function that fills the temporary path it is given, "
                f"got {type(write).__name__}."
            )


def _check_stem(stem: str) -> None:
    if (
        not isinstance(stem, str)
        or not stem.strip()
        or stem.startswith(".")
        or any(bad in stem for bad in ("/", "\\", "..", "\0"))
    ):
        raise InputError(
            f"Result stem {stem!r} must be a plain file name such as 'bench-07': no folder, "
            "no '..', not hidden. To save somewhere else, pass the folder as directory=."
        )


def _check_suffixes(suffixes: Iterable[str]) -> None:
    for suffix in suffixes:
        if not isinstance(suffix, str) or (suffix and not re.fullmatch(r"\.\w+", suffix)):
            raise InputError(f"Result suffix {suffix!r} must look like '.csv' (or be '').")


def _folder(directory: str | Path | None) -> Path:
    folder = Path(directory or RESULTS_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    _remove_dead_temporaries(folder)
    return folder


def _stamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def _names(stem: str) -> Iterator[str]:
    """stem-STAMP, then stem-STAMP-1, -2, ...: one timestamp for all the tries."""
    base = f"{stem}-{_stamp()}"
    yield base
    for n in itertools.count(1):
        yield f"{base}-{n}"


def _link_all(temps: dict[str, Path], folder: Path, name: str) -> list[Path] | None:
    """Link every temporary to `name + suffix`: all the paths, or None (and none left)
    when one of the names is taken; any other error removes the ones linked and raises."""
    linked: list[Path] = []
    try:
        for suffix, tmp in temps.items():
            path = folder / f"{name}{suffix}"
            os.link(tmp, path)  # fails if the name is taken: never overwrite
            linked.append(path)
        return linked
    except FileExistsError:
        _unlink(linked)
        return None
    except BaseException:
        _unlink(linked)
        raise


def _rename_new(tmp: Path, path: Path) -> bool:
    """Rename folder `tmp` to `path`; False if `path` appeared meanwhile."""
    try:
        os.rename(tmp, path)
    except OSError:
        if path.exists():  # a non-empty folder or a file cannot be replaced
            return False
        raise
    return True


def _unlink(paths) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _tmp_prefix(stem: str) -> str:
    return f".{stem}.tmp{os.getpid()}-"


def _held(make: Callable[[], str]) -> tuple[Path, int]:
    """A new temporary (`make()` creates it) and a descriptor holding an exclusive lock on it.

    The lock is what says "still being written": a process in another PID namespace (a
    container sharing results/) carries a process id that means nothing here, but a flock
    on a file of the same filesystem is seen by every process. A cleanup that took the lock
    first and removed the temporary is noticed (the name is gone) and a new one is made.
    """
    while True:
        path = Path(make())
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # removed before it could be locked: make another
            continue
        with suppress(OSError):  # a filesystem without flock: the process id alone tells
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return path, fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextmanager
def _temporaries(folder: Path, stem: str, suffixes: list[str]) -> Iterator[dict[str, Path]]:
    """Empty hidden files beside the results, one per suffix, removed whatever happens."""
    temps: dict[str, Path] = {}
    locks: list[int] = []

    def make(suffix: str) -> str:
        fd, name = tempfile.mkstemp(dir=folder, prefix=_tmp_prefix(stem), suffix=suffix)
        os.close(fd)
        return name

    try:
        for suffix in suffixes:
            temps[suffix], fd = _held(lambda suffix=suffix: make(suffix))
            locks.append(fd)
            os.chmod(temps[suffix], 0o644)  # mkstemp makes it private; results are read by others
        yield temps
    finally:
        _unlink(temps.values())
        for fd in locks:
            os.close(fd)


@contextmanager
def _temporary_dir(folder: Path, stem: str) -> Iterator[Path]:
    """An empty hidden folder beside the results, removed whatever happens."""
    tmp, fd = _held(lambda: tempfile.mkdtemp(dir=folder, prefix=_tmp_prefix(stem)))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; results and caches are read by others
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        os.close(fd)


def _remove_dead_temporaries(folder: Path) -> None:
    """Remove the temporaries that no process is writing any more (kill -9, power cut).

    Dead means both: no process of that id runs here, and nobody holds the temporary's lock
    (see `_held`): a writer in another PID namespace keeps its lock, so its live temporary
    stays. It is removed while holding the lock, so no writer can take it up meanwhile.
    """
    for entry in folder.iterdir():
        match = _TMP.match(entry.name)
        if not match or _running(int(match.group(1))):
            continue
        if entry.is_symlink():  # never one of ours: nothing to lock
            entry.unlink(missing_ok=True)
            continue
        try:
            fd = os.open(entry, os.O_RDONLY)
        except OSError:  # gone meanwhile, or unreadable: leave it
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held: someone is still writing it
            os.close(fd)
            continue
        except OSError:  # a filesystem without flock: the process id alone tells
            pass
        try:
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        finally:
            os.close(fd)


def _running(pid: int) -> bool:
    try:
        return pid == os.getpid() or psutil.pid_exists(pid)
    except OverflowError:  # not a process id: not one of ours, leave it alone
        return True


def newest(stem: str, suffix: str, directory: str | Path | None = None) -> Path | None:
    """The newest `stem-YYYYmmdd-HHMMSS[-n]suffix` in results/, or None if there is none.

    The name must match exactly: 'loadtest' does not pick up 'loadtest-llama-server-...'.
    """
    folder = Path(directory or RESULTS_DIR)
    if not folder.is_dir():
        return None
    pattern = re.compile(rf"^{re.escape(stem)}-(\d{{8}}-\d{{6}})(?:-(\d+))?{re.escape(suffix)}$")
    found = []
    for path in folder.iterdir():
        match = pattern.match(path.name)
        if match and path.is_file():
            found.append(((match.group(1), int(match.group(2) or 0)), path))
    return max(found)[1] if found else None
