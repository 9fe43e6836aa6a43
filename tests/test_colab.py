"""The Colab install path of llama-cpp-python, with Colab's runtime faked (no Colab here)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llmops_lib import colab


def test_the_cache_key_holds_version_backend_and_python():
    cuda, cpu = colab.wheel_tag("cuda", (3, 13)), colab.wheel_tag("cpu", (3, 13))
    assert cuda != cpu and colab.LLAMA_CPP_VERSION in cuda and cuda.endswith("-py313")


def test_wheels_are_kept_in_drive_when_it_is_mounted(tmp_path):
    assert colab.wheel_dir(tmp_path) == tmp_path / "llmops-wheels"
    assert colab.wheel_dir(tmp_path / "not-mounted").parts[:2] == ("/", "content")


@pytest.mark.parametrize(
    ("want", "installed", "cached", "action"),
    [
        ("cuda", "cuda", None, "ready"),
        ("cuda", "cpu", None, "build"),  # a CPU build on a GPU runtime is replaced
        ("cuda", None, "wheel", "install"),
        ("cpu", "cuda", "wheel", "install"),
    ],
)
def test_the_plan_for_each_runtime_state(want, installed, cached, action):
    assert colab.plan(want, installed, cached) == action


def test_progress_is_one_line_per_step_and_the_tail_is_kept(capsys):
    lines = [f"[{i}/50] Building CXX object x{i}.o\n" for i in range(1, 51)] + ["done\n"]
    tail = colab.report_progress(iter(lines))
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"  llama.cpp build {p:3d}%" for p in range(10, 101, 10)]
    assert tail.endswith("done")


def test_first_run_builds_into_drive_then_later_runs_install_from_it(tmp_path, monkeypatch, capsys):
    built, installs = [], []

    def build(backend, target):
        target.mkdir(parents=True)
        wheel = target / f"llama_cpp_python-{colab.LLAMA_CPP_VERSION}-cp313-linux_x86_64.whl"
        wheel.write_bytes(b"wheel")
        built.append(backend)
        return wheel

    monkeypatch.setattr(colab, "build_wheel", build)
    monkeypatch.setattr(colab, "installed_backend", lambda: "cpu")  # pip's CPU build
    monkeypatch.setattr(subprocess, "run", lambda cmd, check: installs.append(cmd[-1]))
    drive = tmp_path / "MyDrive"
    drive.mkdir()
    first = colab.ensure_llama_cpp(has_gpu=True, drive=drive)
    second = colab.ensure_llama_cpp(has_gpu=True, drive=drive)
    assert built == ["cuda"], "compiled once, not once per notebook"
    assert len(installs) == 2 and all("llmops-wheels" in path for path in installs)
    assert "(cuda) installed from" in first and "(cuda) installed from" in second
    assert "Mount Google Drive" not in capsys.readouterr().out


def test_a_failed_build_shows_the_compilers_last_lines(tmp_path, monkeypatch):
    script = "import sys; print('[1/2] cc a.c'); print('error: no nvcc'); sys.exit(3)"
    real = subprocess.Popen
    monkeypatch.setattr(
        subprocess, "Popen", lambda cmd, **kw: real([sys.executable, "-c", script], **kw)
    )
    with pytest.raises(RuntimeError, match=r"(?s)exit 3.*error: no nvcc"):
        colab.build_wheel("cuda", tmp_path)
