"""The Colab install of llama.cpp (binding + tools), with Colab faked (no Colab here).

The build script is replaced by a fake that writes what the real one writes (a wheel, bin/
with the tools, tools.json) into the cache it is given; nothing is compiled, nothing is
downloaded. The script itself is run only with its options that build nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from importlib import resources
from pathlib import Path

import pytest

from llmops_lib import colab, tools

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = resources.files("llmops_lib") / "data" / "build_llama_tools.sh"

# What the build script leaves behind, in the layout it uses; FAKE_FAIL makes it fail.
FAKE_BUILD = r"""
import json, os, pathlib, sys
root = (pathlib.Path(os.environ["LLMOPS_CACHE"]) / "llama-tools"
        / (os.environ["LLAMA_CPP_VERSION"] + "-" + os.environ["LLMOPS_LLAMA_BACKEND"]))
for pct in (10, 50, 100):
    print(f"  llama.cpp build {pct:3d}%")
if os.environ.get("FAKE_FAIL"):
    print("error: nvcc fatal : Unsupported gpu architecture"); sys.exit(3)
(root / "wheel").mkdir(parents=True); (root / "bin").mkdir()
version = os.environ["LLAMA_CPP_VERSION"]
(root / "wheel" / f"llama_cpp_python-{version}-py3-none-linux_x86_64.whl").write_bytes(b"whl")
tools = {}
for tool in sys.argv[1:]:
    (root / "bin" / tool).write_text("#!/bin/sh\n"); (root / "bin" / tool).chmod(0o755)
    tools[tool] = str(root / "bin" / tool)
info = {"llama_cpp_python": version, "backend": os.environ["LLMOPS_LLAMA_BACKEND"], "tools": tools}
(root / "tools.json").write_text(json.dumps(info))
"""


class FakeColab:
    """A runtime: Drive, a local cache, the build script and pip, all faked and recorded."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
        self.tmp, self.monkeypatch = tmp_path, monkeypatch
        self.drive = tmp_path / "MyDrive"
        self.drive.mkdir()
        self.builds: list[dict[str, str]] = []  # the environment each build was given
        self.installs: list[str] = []
        self.installed: str | None = None
        self.runtimes = 0
        real_popen = subprocess.Popen

        def popen(cmd, env, **kwargs):
            assert cmd == ["bash", str(tools.SCRIPT)]
            self.builds.append(env)
            fake = [sys.executable, "-c", FAKE_BUILD, *tools.TOOLS]
            return real_popen(fake, env=env, **kwargs)

        def pip(cmd, check):
            assert cmd[1:5] == ["-m", "pip", "install", "-q"] and "--no-deps" in cmd
            self.installs.append(cmd[-1])
            self.installed = "cuda" if "-cuda" in cmd[-1] else "cpu"

        monkeypatch.setattr(colab.subprocess, "Popen", popen)
        monkeypatch.setattr(colab.subprocess, "run", pip)
        monkeypatch.setattr(colab, "installed_backend", lambda: self.installed)
        self.new_runtime()

    def new_runtime(self):
        """A fresh runtime: an empty local cache, nothing installed; Drive stays."""
        self.runtimes += 1
        self.monkeypatch.setenv("LLMOPS_CACHE", str(self.tmp / f"runtime{self.runtimes}"))
        self.installed = None

    def archives(self) -> list[str]:
        return sorted(p.name for p in (self.drive / "llmops-llama-cpp").glob("*"))


@pytest.fixture
def fake(tmp_path, monkeypatch):
    for name in ("FAKE_FAIL", "LLMOPS_CUDA_ARCHITECTURES", "LLMOPS_LLAMA_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    return FakeColab(tmp_path, monkeypatch)


def test_the_cache_key_holds_version_backend_and_python():
    cuda, cpu = colab.build_tag("cuda", (3, 13)), colab.build_tag("cpu", (3, 13))
    assert cuda != cpu and colab.LLAMA_CPP_VERSION in cuda and cuda.endswith("-py313")


def test_builds_are_kept_in_drive_when_it_is_mounted(tmp_path):
    assert colab.store_dir(tmp_path) == tmp_path / "llmops-llama-cpp"
    assert colab.store_dir(tmp_path / "not-mounted").parts[:2] == ("/", "content")


@pytest.mark.parametrize(
    ("want", "installed", "local", "archived", "action"),
    [
        ("cuda", "cuda", True, True, "ready"),
        ("cuda", "cpu", True, True, "install"),  # pip's CPU build on a GPU runtime is replaced
        ("cuda", "cuda", False, True, "restore"),  # the binding alone is not enough: tools too
        ("cpu", None, False, False, "build"),
    ],
)
def test_the_plan_for_each_runtime_state(want, installed, local, archived, action):
    assert colab.plan(want, installed, local, archived) == action


def test_first_run_builds_once_into_drive_and_a_new_runtime_restores_it(fake, capsys):
    first = colab.ensure_llama_cpp(has_gpu=True, drive=fake.drive)
    again = colab.ensure_llama_cpp(has_gpu=True, drive=fake.drive)  # the next notebook
    assert len(fake.builds) == 1, "built once, not once per notebook"
    assert fake.archives() == [f"{colab.build_tag('cuda')}.tar"]
    out = capsys.readouterr().out
    assert "Building llama.cpp" in out and "20-30 min" in out and "llama.cpp build 100%" in out
    assert "(cuda): binding installed from" in first and "tools in" in again
    assert "Mount Google Drive" not in out

    fake.new_runtime()
    restored = colab.ensure_llama_cpp(has_gpu=True, drive=fake.drive)
    assert len(fake.builds) == 1, "a new runtime restores the archive, it does not build"
    assert "Restoring" in capsys.readouterr().out and "installed from" in restored
    assert fake.installed == "cuda" and len(fake.installs) == 2
    # The restored tools are found where tools.py looks, and run from local disk, not Drive.
    root = colab.local_dir("cuda")
    assert fake.installs[-1].startswith(str(root / "wheel"))
    manifest = json.loads((root / "tools.json").read_text())
    assert set(manifest["tools"]) == set(tools.TOOLS)
    for path in manifest["tools"].values():
        assert Path(path).parent == root / "bin" and os.access(path, os.X_OK)


@pytest.mark.parametrize(("first", "then"), [(False, True), (True, False)])
def test_a_cuda_runtime_never_reuses_a_cpu_build_nor_the_reverse(fake, first, then):
    colab.ensure_llama_cpp(has_gpu=first, drive=fake.drive)
    fake.new_runtime()
    colab.ensure_llama_cpp(has_gpu=then, drive=fake.drive)
    assert [env["LLMOPS_LLAMA_BACKEND"] for env in fake.builds] == [
        "cuda" if first else "cpu",
        "cuda" if then else "cpu",
    ]
    assert fake.archives() == sorted(f"{colab.build_tag(b)}.tar" for b in ("cpu", "cuda"))
    assert fake.installed == ("cuda" if then else "cpu")


def test_the_script_gets_the_version_python_and_colabs_gpus(fake):
    colab.ensure_llama_cpp(has_gpu=True, drive=fake.drive)
    fake.new_runtime()
    (fake.drive / "llmops-llama-cpp").rename(fake.tmp / "elsewhere")  # force a second build
    colab.ensure_llama_cpp(has_gpu=False, drive=fake.drive)
    cuda, cpu = fake.builds
    for runtime, env in enumerate((cuda, cpu), start=1):
        assert env["LLAMA_CPP_VERSION"] == colab.LLAMA_CPP_VERSION
        assert env["PYTHON"] == sys.executable
        assert env["LLMOPS_CACHE"] == str(fake.tmp / f"runtime{runtime}")  # the local cache
    assert (cuda["LLMOPS_LLAMA_BACKEND"], cpu["LLMOPS_LLAMA_BACKEND"]) == ("cuda", "cpu")
    assert cuda["LLMOPS_CUDA_ARCHITECTURES"] == "75;80;89"
    assert "LLMOPS_CUDA_ARCHITECTURES" not in cpu


def test_without_drive_the_build_stays_on_local_disk_and_says_how_to_keep_it(
    fake, monkeypatch, capsys
):
    monkeypatch.setattr(colab, "store_dir", lambda drive: fake.tmp / "content-disk")
    colab.ensure_llama_cpp(has_gpu=False, drive=fake.tmp / "not-mounted")
    assert "Mount Google Drive" in capsys.readouterr().out
    assert [p.name for p in (fake.tmp / "content-disk").glob("*.tar")] == [
        f"{colab.build_tag('cpu')}.tar"
    ]


def test_a_failed_build_raises_with_its_last_lines_and_keeps_nothing(fake, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL", "1")
    with pytest.raises(RuntimeError, match=r"(?s)exit 3.*Unsupported gpu architecture"):
        colab.ensure_llama_cpp(has_gpu=True, drive=fake.drive)
    assert fake.archives() == [] and fake.installs == []


def test_the_archive_is_a_tar_of_the_cache_folder(fake):
    colab.ensure_llama_cpp(has_gpu=False, drive=fake.drive)
    archive = fake.drive / "llmops-llama-cpp" / f"{colab.build_tag('cpu')}.tar"
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    folder = f"{colab.LLAMA_CPP_VERSION}-cpu"
    assert f"{folder}/tools.json" in names and f"{folder}/bin/llama-server" in names
    assert any(re.fullmatch(rf"{folder}/wheel/llama_cpp_python-.*\.whl", n) for n in names)


# The build script itself: shipped in the package, one recipe for a checkout and for Colab.


def _script(*args: str, script=SCRIPT, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMA_CPP", "LLMOPS_"))}
    clean.pop("PYTHON", None)
    return subprocess.run(
        ["bash", str(script), *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _config(result: subprocess.CompletedProcess) -> dict[str, str]:
    assert result.returncode == 0, result.stderr
    return dict(line.split("=", 1) for line in result.stdout.splitlines())


def test_the_build_script_ships_in_the_package():
    assert SCRIPT.is_file() and Path(str(SCRIPT)) == tools.SCRIPT
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'llmops_lib = \[[^]]*"data/\*"', pyproject), "package data covers data/"
    assert not (ROOT / "scripts" / "build_llama_tools.sh").exists(), "one copy only"


def test_in_a_checkout_the_version_comes_from_requirements_txt():
    pin = re.search(
        r"^llama-cpp-python(\[[^]]*\])?==(\S+)", (ROOT / "requirements.txt").read_text(), re.M
    )
    config = _config(_script("--print-config", LLMOPS_LLAMA_BACKEND="cpu"))
    assert config["version"] == pin[2] == colab.LLAMA_CPP_VERSION
    assert "-DGGML_CUDA" not in config["cmake_args"]
    clash = _script("--print-config", LLAMA_CPP_VERSION="0.0.1")
    assert clash.returncode == 1 and "requirements.txt pins" in clash.stderr


def test_print_wheel_finds_the_existing_build_without_building():
    if tools.missing() is not None:
        pytest.skip("llama.cpp is not built here (make setup)")
    built = tools.tools_dir()
    before = sorted(p.name for p in built.iterdir())
    result = _script("--print-wheel", LLMOPS_CACHE=str(built.parents[1]))
    assert result.returncode == 0, result.stderr
    wheel = Path(result.stdout.strip())
    assert wheel.is_file() and wheel.parent == built / "wheel"
    assert f"-{colab.LLAMA_CPP_VERSION}-" in wheel.name
    assert sorted(p.name for p in built.iterdir()) == before, "nothing built or removed"


def test_without_a_checkout_the_caller_gives_version_backend_python_and_gpus(tmp_path):
    installed = tmp_path / "site-packages" / "llmops_lib" / "data" / "build_llama_tools.sh"
    installed.parent.mkdir(parents=True)
    shutil.copy(SCRIPT, installed)
    config = _config(
        _script(
            "--print-config",
            script=installed,
            LLAMA_CPP_VERSION="9.9.9",
            PYTHON="/usr/bin/python3",
            LLMOPS_LLAMA_BACKEND="cuda",
            LLMOPS_CUDA_ARCHITECTURES="75;80;89",
            LLMOPS_CACHE=str(tmp_path / "cache"),
        )
    )
    assert config["version"] == "9.9.9" and config["backend"] == "cuda"
    assert config["python"] == "/usr/bin/python3"
    assert config["root"] == str(tmp_path / "cache" / "llama-tools" / "9.9.9-cuda")
    assert "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=75;80;89" in config["cmake_args"]
    no_version = _script("--print-config", script=installed)
    assert no_version.returncode == 1 and "set LLAMA_CPP_VERSION" in no_version.stderr


def test_the_real_build_survives_the_round_trip_through_an_archive(tmp_path, monkeypatch):
    """Symlinked libraries, exec bits and $ORIGIN RPATH: the restored llama-server starts."""
    if tools.missing() is not None:
        pytest.skip("llama.cpp is not built here (make setup)")
    built = tools.tools_dir()
    archive = colab.store(built, tmp_path / "drive" / "build.tar")
    monkeypatch.setenv("LLMOPS_CACHE", str(tmp_path / "new-runtime"))
    root = colab.restore(archive, tmp_path / "new-runtime" / "llama-tools" / built.name)
    assert colab.complete(root)
    server = json.loads((root / "tools.json").read_text())["tools"]["llama-server"]
    assert server == str(root / "bin" / "llama-server")
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    run = subprocess.run([server, "--version"], env=env, capture_output=True, timeout=30)
    assert run.returncode == 0, run.stderr
