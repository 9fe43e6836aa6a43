"""A missing tool is named in one line before the setup installs anything or the build starts.

Each test runs `make setup` (or scripts/preflight.sh) in a copy of the repo's setup files,
with a PATH of links to every program on this one but those taken away, an empty llama.cpp
cache (so the build is still to come) and pip pointed at no index (so a check that wrongly
passes fails in seconds instead of installing).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
SETUP_FILES = [
    "Makefile",
    "scripts",
    "requirements.txt",
    "requirements-models.txt",
    "requirements-dev.txt",
    "constraints.txt",
    "pyproject.toml",
    "llmops_lib/data/build_llama_tools.sh",
]
COMPILERS = {"cc", "gcc", "clang", "c++", "g++", "clang++"}
apt = pytest.mark.skipif(
    shutil.which("apt-get") is None, reason="checks the messages for Debian/Ubuntu (apt)"
)


@pytest.fixture
def checkout(tmp_path):
    """The files `make setup` reads, in a folder of their own."""
    root = tmp_path / "repo"
    for name in SETUP_FILES:
        source, target = REPO / name, root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
    return root


def _path_without(folder: Path, removed: set[str], replaced: dict[str, str] | None = None) -> str:
    """A folder of links to every program on PATH but `removed`; `replaced` are scripts."""
    folder.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        for program in Path(directory).glob("*") if Path(directory).is_dir() else ():
            link = folder / program.name
            if program.name in removed or link.exists() or not os.access(program, os.X_OK):
                continue
            if program.is_file():
                link.symlink_to(program)
    for name, script in (replaced or {}).items():
        (folder / name).unlink(missing_ok=True)
        (folder / name).write_text(script)
        (folder / name).chmod(0o755)
    return str(folder)


def _env(tmp_path: Path, path: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "CC", "CXX"))}
    return env | {
        "PATH": path,
        "LLMOPS_CACHE": str(tmp_path / "cache"),
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INDEX": "1",
        **extra,
    }


def _setup(checkout: Path, env: dict[str, str], target: str = "setup") -> tuple[int, list[str]]:
    """`make setup` there: its exit code and the lines preflight printed."""
    done = subprocess.run(
        ["make", "-C", str(checkout), target], env=env, capture_output=True, text=True, timeout=120
    )
    return done.returncode, [line for line in done.stderr.splitlines() if line.startswith("setup:")]


def _nothing_installed(checkout: Path, tmp_path: Path) -> None:
    assert not (checkout / ".venv").exists(), "a .venv was started"
    assert not (tmp_path / "cache" / "llama-tools").exists(), "the llama.cpp build was started"


def test_this_machine_passes_without_cmake_or_ninja(checkout, tmp_path):
    """The build's own pip environment fetches cmake and ninja; nothing refuses for them."""
    path = _path_without(tmp_path / "bin", {"cmake", "ninja"})
    done = subprocess.run(
        [checkout / "scripts/preflight.sh"],
        env=_env(tmp_path, path),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


@apt
@pytest.mark.parametrize(
    "removed, named",
    [
        (COMPILERS, ["no working C and C++ compiler", "sudo apt install build-essential"]),
        ({"c++", "g++", "clang++"}, ["no working C++ compiler", "sudo apt install g++"]),
        ({"flock"}, ["no flock", "sudo apt install util-linux"]),
        ({"python3"}, ["no python3", "sudo apt install python3 python3-venv"]),
    ],
    ids=["no-compiler", "no-c++", "no-flock", "no-python"],
)
def test_a_missing_program_is_named_before_anything_is_installed(
    checkout, tmp_path, removed, named
):
    code, lines = _setup(checkout, _env(tmp_path, _path_without(tmp_path / "bin", removed)))
    assert code != 0
    assert len(lines) == 1 and all(part in lines[0] for part in named), lines
    _nothing_installed(checkout, tmp_path)


def test_a_mac_is_told_to_install_the_command_line_tools(checkout, tmp_path):
    darwin = {"uname": "#!/bin/sh\necho Darwin\n"}
    path = _path_without(tmp_path / "bin", COMPILERS, darwin)
    code, lines = _setup(checkout, _env(tmp_path, path))
    assert code != 0 and len(lines) == 1, lines
    assert lines[0].endswith("install it first: xcode-select --install")
    _nothing_installed(checkout, tmp_path)


def _older_python() -> str | None:
    """A real Python older than 3.11 on this machine, if there is one."""
    candidates = [shutil.which(f"python3.{minor}") for minor in range(10, 5, -1)]
    candidates += glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3"))
    older = "import sys; sys.exit(sys.version_info >= (3, 11))"
    for python in filter(None, candidates):
        if subprocess.run([python, "-c", older], capture_output=True).returncode == 0:
            return python
    return None


def test_an_older_python_is_named_with_the_version_to_install(checkout, tmp_path):
    old = _older_python()
    if old is None:
        pytest.skip("no Python older than 3.11 on this machine")
    path = _path_without(
        tmp_path / "bin", {"python3"}, {"python3": f'#!/bin/sh\nexec {old} "$@"\n'}
    )
    code, lines = _setup(checkout, _env(tmp_path, path))
    assert code != 0 and len(lines) == 1, lines
    assert "3.11 or newer is needed" in lines[0] and "PYTHON=python3.11" in lines[0]
    _nothing_installed(checkout, tmp_path)


@apt
def test_a_python_without_ensurepip_is_named_with_its_venv_package(checkout, tmp_path):
    """Debian and Ubuntu ship venv's ensurepip in a package of its own (python3.X-venv)."""
    hidden = tmp_path / "hide" / "ensurepip"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('not installed')\n")
    path = _path_without(tmp_path / "bin", set())
    code, lines = _setup(checkout, _env(tmp_path, path, PYTHONPATH=str(hidden.parent)))
    assert code != 0 and len(lines) == 1, lines
    assert "cannot make a virtual environment" in lines[0] and "-venv" in lines[0]
    _nothing_installed(checkout, tmp_path)


def _df_with(free_kb: int) -> str:
    """A df that reports every folder on one filesystem with free_kb free (POSIX format)."""
    return (
        "#!/bin/sh\n"
        "echo 'Filesystem 1024-blocks Used Available Capacity Mounted on'\n"
        f"echo '/dev/fake 100000000 90000000 {free_kb} 90% /'\n"
    )


def test_too_little_disk_is_named_before_anything_is_installed(checkout, tmp_path):
    path = _path_without(tmp_path / "bin", set(), {"df": _df_with(2 * 1024 * 1024)})
    code, lines = _setup(checkout, _env(tmp_path, path))
    assert code != 0 and len(lines) == 1, lines
    assert lines[0].startswith("setup: 2 GB free for") and "needs about" in lines[0]
    _nothing_installed(checkout, tmp_path)


def test_the_build_alone_is_checked_when_only_the_build_is_left(checkout, tmp_path):
    """A set-up .venv whose llama.cpp cache was removed: `make setup` only rebuilds, and
    names the missing compiler first."""
    stamp = checkout / ".venv" / ".installed"
    (checkout / ".venv" / "bin").mkdir(parents=True)
    os.symlink(shutil.which("python3"), checkout / ".venv" / "bin" / "python")
    stamp.touch()
    path = _path_without(tmp_path / "bin", COMPILERS)
    code, lines = _setup(checkout, _env(tmp_path, path))
    assert code != 0 and any("no working C and C++ compiler" in line for line in lines), lines
    assert not (tmp_path / "cache" / "llama-tools").exists(), "the build was started"


def test_every_pin_installs_on_the_oldest_python_that_preflight_accepts():
    """preflight.sh and pyproject accept Python 3.11.0. A pin whose Requires-Python wants
    more (soupsieve 4.1.2 wants 3.11.5) sent pip on Debian 12's Python 3.11.2 backtracking
    without end, downloading a CUDA build of torch on the way."""
    oldest = "3.11.0"
    accepted = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert SpecifierSet(accepted).contains(oldest)
    pins = {
        canonicalize_name(line.split("==")[0])
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    too_new = {
        dist.metadata["Name"]: dist.metadata["Requires-Python"]
        for dist in metadata.distributions()
        if canonicalize_name(dist.metadata["Name"]) in pins
        and not SpecifierSet(dist.metadata["Requires-Python"] or "").contains(oldest)
    }
    assert too_new == {}
