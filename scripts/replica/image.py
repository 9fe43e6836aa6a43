"""Colab's CPU image as a virtual environment: Colab's Python where this machine has one, and
Colab's version of every package the course imports and of their dependencies, from PyPI only.

Why: 10 of the 12 notebooks open on Colab's CPU runtime, whose torch, transformers, pandas, ...
(tests/colab/pip-freeze.cpu.txt) are not the versions the course pins for itself. The image is
built once per replica run; each runtime gets a hard-linked copy at the same path (pip removes
and writes files, it never edits one in place, so what a runtime installs leaves the image as
it was: `changed_files` checks it).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import stat
import subprocess
import tomllib
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path
from urllib.parse import unquote

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
FREEZE = ROOT / "tests" / "colab" / "pip-freeze.cpu.txt"
STANDIN = Path(__file__).resolve().parent / "standin"
# Colab's CPU runtime (googlecolab/backend-info os-info.txt at a724079, 2026-08-19; cores and
# memory: googlecolab/colabtools#1937 and Colab's own resource panel).
COLAB_PYTHON = "3.13.15"
COLAB_OS = "Ubuntu 22.04.5 LTS (glibc 2.35)"
COLAB_CPU = "2 vCPUs (1 physical core), 12.7 GB RAM"
# The kernel that runs the cells and `%pip`, in Colab's versions, beside the course's packages.
KERNEL = ("ipykernel", "ipython", "jupyter-client", "pip", "setuptools")
# tqdm.auto (huggingface_hub, transformers) draws its bars as widgets where ipywidgets is
# installed, as it is on Colab.
ALSO = ("ipywidgets",)
# What PyPI's CUDA build of torch brings along: its versions follow torch, not Colab's CPU
# image (whose +cpu torch needs none of it; a few are there for other packages).
CUDA_BUILD = re.compile(r"^(nvidia-.*|cuda-.*|triton)$")
# The course's requirements: what each notebook's setup cell installs, and what it imports
# (requirements-models.txt is installed without dependencies, and Colab has none of it).
EXTRAS = ("colab", "guard")
REQUIREMENT_FILES = ("requirements.txt",)


def read_freeze(path: Path = FREEZE) -> dict[str, str]:
    """Colab's packages: canonical name -> its line in the freeze (`name==v` or `name @ url`)."""
    packages = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            packages[canonicalize_name(re.split(r"\s*(?:==|@)", line, maxsplit=1)[0])] = line
    return packages


def pypi_pins(freeze: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(canonical name -> the version to take from PyPI, name -> how it deviates from Colab).

    Colab installs a few packages from URLs: its CPU torch family from download.pytorch.org
    (`+cpu` builds, which PyPI does not have: PyPI's build of the same version is taken, a CUDA
    build that runs on the CPU), its own google-colab (a stand-in replaces it) and others the
    course does not use (left out).
    """
    pins, notes = {}, {}
    for name, line in freeze.items():
        if "==" in line:
            pins[name] = line.split("==", 1)[1].strip()
            continue
        url = line.split("@", 1)[1].strip()
        wheel = unquote(url.rsplit("/", 1)[-1])
        if "download.pytorch.org" in url and "+cpu" in wheel:
            version = wheel.split("-")[1]
            pins[name] = version.split("+")[0]
            notes[name] = (
                f"{name}: Colab has {version} (download.pytorch.org); PyPI has no +cpu build: "
                f"{pins[name]} from PyPI, a CUDA build, runs on the CPU"
            )
        elif name == "google-colab":
            notes[name] = (
                "google-colab: Colab's own package, not on PyPI; a stand-in "
                "(scripts/replica/standin: userdata, drive, Colab's kernel and shell classes)"
            )
        else:
            notes[name] = f"{name}: Colab installs it from a URL ({url[:60]}...): left out"
    return pins, notes


def colab_markers(python: str = COLAB_PYTHON) -> dict[str, str]:
    """Environment markers as Colab's interpreter evaluates them (Linux x86_64, as here)."""
    return {
        **default_environment(),
        "python_version": ".".join(python.split(".")[:2]),
        "python_full_version": python,
    }


def course_requirements(root: Path = ROOT) -> list[Requirement]:
    """What the course installs: its pinned requirements and the library's Colab extras."""
    lines = []
    for name in REQUIREMENT_FILES:
        for line in (root / name).read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                lines.append(line)
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lines += project["dependencies"]
    for extra in EXTRAS:
        lines += project["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


def selection(reqs: list[Requirement], freeze: dict[str, str]) -> tuple[set[str], list[str]]:
    """(Colab packages the image needs, packages whose requirements could not be read).

    Each requirement that Colab ships is taken (pip then adds its dependencies in Colab's
    versions); one that Colab lacks (setfit, llama-cpp-python, ...) is walked through, its
    requirements read from its metadata as installed here, so that the Colab packages it needs
    are in the image too, in Colab's version, as they are on Colab.
    """
    markers = colab_markers()
    chosen: set[str] = {canonicalize_name(n) for n in (*KERNEL, *ALSO)}
    walked: set[str] = set()
    unread: list[str] = []
    queue = [(req, "") for req in reqs]
    while queue:
        req, extra = queue.pop()
        if req.marker and not req.marker.evaluate({**markers, "extra": extra}):
            continue
        name = canonicalize_name(req.name)
        if name in freeze:
            chosen.add(name)
            continue
        if name in walked:
            continue
        walked.add(name)
        try:
            lines = requires(name) or []
        except PackageNotFoundError:
            unread.append(name)
            continue
        queue += [(Requirement(line), e) for line in lines for e in ("", *req.extras)]
    return chosen, sorted(unread)


def python_version(python: Path) -> str | None:
    try:
        out = subprocess.run(
            [str(python), "-c", "import platform; print(platform.python_version())"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def python_candidates() -> list[str]:
    """Where an interpreter for Colab's Python (3.13) is looked for, in order."""
    pyenv = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    places = [f"{pyenv}/versions/3.1[1-9]*/bin/python3"]
    places += [f"{d}/python3.1[1-9]" for d in ("/usr/local/bin", "/usr/bin")]
    found = [shutil.which("python3.13") or ""]
    for pattern in places:
        found += sorted(glob.glob(pattern))
    return [f for f in dict.fromkeys(found) if f]


def find_python(explicit: str | None = None) -> tuple[Path, str, list[str]]:
    """(interpreter, its version, where it looked): Colab's 3.13 where there is one (the
    newest patch release), else the nearest minor version (3.11 at least: pandas 3)."""
    looked = [explicit] if explicit else python_candidates()
    versions = {p: v for p in looked if (v := python_version(Path(p)))}
    if not versions:
        raise SystemExit(f"colab_replica: no Python 3.11+ found; looked at {looked}")
    path, version = min(versions.items(), key=lambda item: closeness(item[1]))
    return Path(path), version, looked


def closeness(version: str, colab: str = COLAB_PYTHON) -> tuple[int, int]:
    """Sort key: Colab's minor version first, then the newest patch release of it."""
    major, minor, micro = (int(x) for x in re.findall(r"\d+", version)[:3])
    c_major, c_minor = (int(x) for x in colab.split(".")[:2])
    return abs(minor - c_minor) + 100 * abs(major - c_major), -micro


@dataclass
class Image:
    """The built image: where it is, what is in it, and each file as built."""

    path: Path
    python_version: str
    packages: dict[str, str]  # canonical name -> version
    build_s: float
    files: dict[str, tuple[int, int]] = field(repr=False)
    unread: list[str] = field(default_factory=list)  # requirements not walked


def run(cmd: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> None:
    """Run `cmd` with its output appended to `log`; on failure, raise with the log's tail."""
    with log.open("a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        done = subprocess.run(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{cmd[:6]} failed (exit {done.returncode}); {log} ends:\n{tail}")


def build(
    python: Path, target: Path, pins: dict[str, str], names: set[str], env: dict, log: Path
) -> None:
    """A virtual environment at `target`: Colab's pip, then `names` and their dependencies in
    Colab's versions (`pins` as constraints), then the google.colab stand-in."""
    run([str(python), "-m", "venv", str(target)], env, log)
    pip = [str(target / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "off"]
    run([*pip, f"pip=={pins['pip']}"], env, log)
    constraints = target.parent / "colab-constraints.txt"
    kept = {n: v for n, v in sorted(pins.items()) if not CUDA_BUILD.match(n)}
    constraints.write_text("".join(f"{n}=={v}\n" for n, v in kept.items()))
    wanted = sorted(f"{name}=={pins[name]}" for name in names)
    run([*pip, "-c", str(constraints), *wanted], env, log)
    run([*pip, "--no-deps", "--no-build-isolation", str(STANDIN)], env, log)


def installed(python: Path, env: dict | None = None) -> dict[str, str]:
    """canonical name -> version of every distribution that `python` sees."""
    code = (
        "import importlib.metadata as m, json; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    )
    out = subprocess.run(
        [str(python), "-I", "-c", code], capture_output=True, text=True, env=env, check=True
    )
    return {canonicalize_name(k): v for k, v in json.loads(out.stdout).items()}


def differences(
    packages: dict[str, str], pins: dict[str, str]
) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """({name: (Colab's version, this one)} for those that differ, {name: version} of those
    Colab does not have)."""
    changed = {n: (pins[n], v) for n, v in packages.items() if n in pins and pins[n] != v}
    extra = {n: v for n, v in packages.items() if n not in pins}
    return changed, extra


def file_states(path: Path) -> dict[str, tuple[int, int]]:
    """relative path -> (size, mtime in ns) of every regular file under `path`."""
    states = {}
    for folder, _, files in os.walk(path):
        for name in files:
            full = os.path.join(folder, name)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                states[os.path.relpath(full, path)] = (st.st_size, st.st_mtime_ns)
    return states


def changed_files(path: Path, before: dict[str, tuple[int, int]]) -> list[str]:
    """Files of the image that differ from when it was built (a runtime wrote through a
    hard link): the next runtime would not start from Colab's image."""
    now = file_states(path)
    return sorted(n for n, state in before.items() if now.get(n) != tuple(state))


def hardlink_copy(image: Path, target: Path) -> None:
    """A new runtime's environment: every file of the image hard-linked at `target` (2 s for
    the 5.6 GB, 66,000-file image here, where a copy takes 68 s)."""
    subprocess.run(["cp", "-al", str(image), str(target)], check=True)
