"""Results are written atomically, with a timestamp, never over an earlier run."""

from __future__ import annotations

import pytest

from llmops_lib import results


def test_new_path_never_hands_out_a_name_twice(tmp_path):
    first = results.new_path("run", ".csv", tmp_path)
    first.touch()
    second = results.new_path("run", ".csv", tmp_path)
    assert second != first and not second.exists()
    assert second.name.startswith("run-") and second.suffix == ".csv"


def test_write_atomic_never_replaces_an_existing_file(tmp_path):
    path = results.write_atomic(tmp_path / "a.txt", lambda tmp: tmp.write_text("one"))
    with pytest.raises(FileExistsError):
        results.write_atomic(path, lambda tmp: tmp.write_text("two"))
    assert path.read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temporary file left


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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing half-written
