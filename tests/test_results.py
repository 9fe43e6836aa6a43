"""Results are written atomically, with a timestamp, never over an earlier run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

import pandas as pd
import pytest

from llmops_lib.core import results

STAMP = "20250101-120000"


def files(folder) -> list[str]:
    """Every name in `folder`, hidden temporaries included."""
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def same_second(monkeypatch):
    """Every save in the test happens in the same second."""
    monkeypatch.setattr(results, "_stamp", lambda: STAMP)


def test_each_save_gets_a_new_timestamped_name(tmp_path):
    first = results.save("run", ".txt", lambda tmp: tmp.write_text("one"), tmp_path)
    second = results.save("run", ".txt", lambda tmp: tmp.write_text("two"), tmp_path)
    assert re.fullmatch(r"run-\d{8}-\d{6}\.txt", first.name)
    assert second != first and second.name.startswith("run-") and second.suffix == ".txt"
    assert (first.read_text(), second.read_text()) == ("one", "two")
    assert files(tmp_path) == sorted([first.name, second.name])  # no temporary file left


def test_the_default_folder_is_read_when_saving(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path / "results")
    path = results.save("run", ".txt", lambda tmp: tmp.write_text("x"))
    assert path.parent == tmp_path / "results"


def _save_file(folder, stem, write):
    return results.save(stem, ".txt", lambda tmp: (write(), tmp.write_text(stem)), folder)


def _save_table(folder, stem, write):
    class Table(pd.DataFrame):
        def to_csv(self, *args, **kwargs):
            write()
            return super().to_csv(*args, **kwargs)

    return results.save_frame(Table({"a": [1]}), stem, directory=folder)[0]


def _save_folder(folder, stem, write):
    return results.save_dir(stem, lambda tmp: (write(), (tmp / "w").write_text(stem)), folder)


SAVERS = [_save_file, _save_table, _save_folder]


@pytest.mark.parametrize("saver", SAVERS)
def test_saves_in_the_same_second_get_names_of_their_own(tmp_path, same_second, saver):
    """All writers pick the same first name, then race to publish: each takes the next one."""
    writers = 6
    barrier = threading.Barrier(writers)
    saved, errors = [], []

    def one():
        try:
            saved.append(saver(tmp_path, "run", lambda: barrier.wait(timeout=10)))
        except Exception as err:  # collected: an exception in a thread fails nothing
            errors.append(err)

    threads = [threading.Thread(target=one) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    names = {p.name.removesuffix(p.suffix) for p in saved}
    assert names == {f"run-{STAMP}"} | {f"run-{STAMP}-{n}" for n in range(1, writers)}
    assert files(tmp_path) == sorted(p.name for p in saved)  # no temporary left


@pytest.mark.parametrize("stem", ["../escaped", "sub/run", "..", "a\\b", "", ".hidden"])
@pytest.mark.parametrize("saver", SAVERS)
def test_a_stem_that_is_not_a_plain_name_is_rejected(tmp_path, stem, saver):
    folder = tmp_path / "results"
    with pytest.raises(ValueError, match=re.escape(repr(stem)) + ".*directory="):
        saver(folder, stem, lambda: None)
    assert not folder.exists() and files(tmp_path) == []


@pytest.mark.parametrize("saver", SAVERS)
def test_an_interrupted_save_leaves_no_temporary_file(tmp_path, saver):
    def interrupt():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        saver(tmp_path, "run", interrupt)
    assert files(tmp_path) == []


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="kill -9 is a POSIX signal")
def test_temporaries_of_a_killed_save_are_removed_by_the_next_save(tmp_path):
    killed = (
        "import os, signal, sys\n"
        "from llmops_lib.core import results\n"
        "def write(tmp):\n"
        "    tmp.write_text('half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "results.save('run', '.txt', write, sys.argv[1])\n"
    )
    run = subprocess.run([sys.executable, "-c", killed, str(tmp_path)], timeout=60)
    assert run.returncode == -signal.SIGKILL
    assert [name.startswith(".run") for name in files(tmp_path)] == [True]  # left behind

    path = results.save("run", ".txt", lambda tmp: tmp.write_text("whole"), tmp_path)
    assert files(tmp_path) == [path.name]


# A writer in a container that shares results/: its process id (here one above Linux's
# largest) names no process in this PID namespace. It starts a save and waits for `go`.
FOREIGN_PID = 2**22 + 1
CONTAINER = (
    "import os, sys, time\n"
    "from pathlib import Path\n"
    "from llmops_lib.core import results\n"
    f"os.getpid = lambda: {FOREIGN_PID}\n"
    "folder, go, kind = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]\n"
    "def write(tmp):\n"
    "    (tmp / 'weights.bin' if kind == 'folder' else tmp).write_text('whole')\n"
    "    print('writing', flush=True)\n"
    "    while not go.exists():\n"
    "        time.sleep(0.02)\n"
    "if kind == 'folder':\n"
    "    print(results.save_dir('model', write, folder).name)\n"
    "else:\n"
    "    print(results.save('run', '.txt', write, folder).name)\n"
)


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_save_from_another_pid_namespace_survives_the_hosts_cleanup(tmp_path, kind):
    """The host's next save cleans the folder while the container is still writing: its
    temporary carries a process id that is dead here, but its writer holds the lock."""
    folder, go = tmp_path / "results", tmp_path / "go"
    folder.mkdir()
    container = subprocess.Popen(
        [sys.executable, "-c", CONTAINER, str(folder), str(go), kind],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert container.stdout.readline() == "writing\n"
        [temporary] = [name for name in files(folder) if f".tmp{FOREIGN_PID}-" in name]
        results.save("host", ".txt", lambda tmp: tmp.write_text("host"), folder)  # cleans up
        assert temporary in files(folder)  # still being written: kept
        go.touch()
        published = folder / container.stdout.readline().strip()
        assert container.wait(timeout=60) == 0
    finally:
        container.kill()
    saved = published / "weights.bin" if kind == "folder" else published
    assert saved.read_text() == "whole"


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_dead_writers_temporary_from_another_namespace_is_removed(tmp_path, kind):
    """Its process id says nothing here, and nobody holds its lock: it is litter."""
    left = tmp_path / f".model.tmp{FOREIGN_PID}-x1y2"
    if kind == "folder":
        left.mkdir()
        (left / "weights.bin").write_text("half")
    else:
        left.write_text("half")
    path = results.save("run", ".txt", lambda tmp: tmp.write_text("x"), tmp_path)
    assert files(tmp_path) == [path.name]


def test_a_table_in_two_formats_shares_one_name(tmp_path, same_second):
    table = pd.DataFrame({"text": ["a"], "truth": ["positive"]})
    (tmp_path / f"t-{STAMP}.xlsx").write_text("an earlier run")  # taken: both move on to -1
    csv, xlsx = results.save_frame(table, "t", (".csv", ".xlsx"), tmp_path, index=False)
    assert (csv.name, xlsx.name) == (f"t-{STAMP}-1.csv", f"t-{STAMP}-1.xlsx")
    assert pd.read_csv(csv).equals(table) and pd.read_excel(xlsx).equals(table)
    assert files(tmp_path) == sorted([f"t-{STAMP}.xlsx", csv.name, xlsx.name])


def test_a_table_that_fails_in_its_second_format_leaves_neither_file(tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    table = pd.DataFrame({"a": [1]})
    with monkeypatch.context() as patch:
        patch.setattr(pd.DataFrame, "to_excel", disk_full)
        with pytest.raises(OSError, match="disk full"):
            results.save_frame(table, "t", (".csv", ".xlsx"), tmp_path)
    assert files(tmp_path) == []

    link = os.link

    def second_link_fails(src, dst):
        if str(dst).endswith(".xlsx"):
            raise PermissionError(f"cannot create {dst}")
        link(src, dst)

    monkeypatch.setattr(os, "link", second_link_fails)
    with pytest.raises(PermissionError):
        results.save_frame(table, "t", (".csv", ".xlsx"), tmp_path)
    assert files(tmp_path) == []  # the .csv, published first, was taken back


def test_save_frame_says_which_formats_it_writes(tmp_path):
    with pytest.raises(ValueError, match=r"\.csv, \.xlsx"):
        results.save_frame(pd.DataFrame({"a": [1]}), "t", (".parquet",), tmp_path)
    with pytest.raises(TypeError, match="DataFrame, got list"):
        results.save_frame([1, 2], "t", directory=tmp_path)


def test_write_atomic_never_replaces_an_existing_file(tmp_path):
    path = results.write_atomic(tmp_path / "a.txt", lambda tmp: tmp.write_text("one"))
    with pytest.raises(FileExistsError):
        results.write_atomic(path, lambda tmp: tmp.write_text("two"))
    assert path.read_text() == "one"
    assert files(tmp_path) == ["a.txt"]  # no temporary file left


def test_write_atomic_dir_publishes_whole_folders_only(tmp_path):
    def write(tmp):
        (tmp / "weights.bin").write_bytes(b"x" * 10)

    target = results.write_atomic_dir(tmp_path / "model", write)
    assert (target / "weights.bin").read_bytes() == b"x" * 10

    with pytest.raises(FileExistsError, match="never replaced"):
        results.write_atomic_dir(target, lambda tmp: (tmp / "other").write_text("y"))
    assert [p.name for p in target.iterdir()] == ["weights.bin"]

    def fail(tmp):
        (tmp / "half").write_text("half")
        raise RuntimeError("crashed while writing")

    with pytest.raises(RuntimeError, match="crashed"):
        results.write_atomic_dir(tmp_path / "broken", fail)
    assert files(tmp_path) == ["model"]  # nothing half-written


def test_a_kind_saves_under_its_name_and_finds_its_newest_file(tmp_path, same_second):
    kind = results.Kind("bench-07", ".csv", "07", "decode speed", formats=(".xlsx",))
    df = pd.DataFrame({"x": [1, 2]})
    first = kind.save_frame(df, tmp_path)
    second = kind.save_frame(df, tmp_path)
    assert [p.suffix for p in first] == [".xlsx", ".csv"]
    assert kind.newest(tmp_path) == second[1] != first[1]  # the reader takes the last run
    other = results.Kind("bench-07-raw", ".csv", "07", "not this one")
    assert other.newest(tmp_path) is None  # an exact name: no prefix match


@pytest.mark.parametrize("stem, suffix", [("../up", ".csv"), ("bench", "csv"), ("", ".csv")])
def test_a_kind_with_a_bad_name_is_refused_where_it_is_declared(stem, suffix):
    with pytest.raises(results.InputError, match="Result (stem|suffix)"):
        results.Kind(stem, suffix, "07", "anything")


def test_replacing_swaps_a_file_whole_or_keeps_the_old_one(tmp_path):
    target = tmp_path / "sub" / "notebook.ipynb"
    with results.replacing(target) as part:
        part.write_text("first")
        assert not target.exists()  # nothing visible until the block ends
    assert target.read_text() == "first"
    with pytest.raises(RuntimeError), results.replacing(target) as part:
        part.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "first"  # a failed rewrite leaves the old file
    with results.replacing(target) as part:
        part.write_text("second")
    assert target.read_text() == "second" and files(target.parent) == ["notebook.ipynb"]
