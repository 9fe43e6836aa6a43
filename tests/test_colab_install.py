"""The Colab install, resolved against both of Colab's published package lists.

tests/colab/pip-freeze.gpu.txt and pip-freeze.cpu.txt are the `pip freeze` of Colab's GPU
and CPU runtimes (googlecolab/backend-info, 2026-08-19, Python 3.13). 10 of the 12
notebooks open on the CPU image. Two resolvers, each on both images:

* offline, always: walk the requirements of what the setup cell installs; a package Colab
  ships must already satisfy every requirement on it (pip would otherwise upgrade or
  downgrade it, and Colab asks to restart the runtime); a package Colab lacks is added, and
  its own requirements are walked from its metadata as installed here (the same pinned
  versions). An approximation of pip's resolver, but one that needs no network.
* pip's own resolver for Python 3.13, where an interpreter for it and PyPI can be had: a
  virtual environment whose site-packages holds an empty record (name and version, no
  requirements) of every package of the image, and `pip install --dry-run --report` of the
  setup cell's requirements, from PyPI only. It sees what pip would really pick (the newest
  version a loose requirement allows); the empty records cannot show a conflict with
  Colab's own pins among themselves.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
import urllib.request
from glob import glob
from importlib.metadata import requires
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename
from packaging.version import Version

from llmops_lib.planning import colab

ROOT = Path(__file__).resolve().parents[1]
IMAGES = {image: ROOT / "tests" / "colab" / f"pip-freeze.{image}.txt" for image in ("gpu", "cpu")}
# Colab's interpreter, for environment markers.
COLAB_ENV = {
    "python_version": "3.13",
    "python_full_version": "3.13.15",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}
# Changes a lesson needs, each with its reason: CodeShield (notebook 06 only) brings semgrep,
# pinned in [guard] to 1.79.0, which pins peewee~=3.14 (Colab has 4.x). Unpinned, pip takes
# the newest semgrep, which changes 9 of Colab's packages (opentelemetry, jsonschema, ...).
GUARD_CHANGES = {"peewee"}


def freeze_versions(image: str) -> dict[str, str]:
    """Package -> version as `pip freeze` printed it (a URL line: from the file name)."""
    packages = {}
    for line in IMAGES[image].read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if "==" in line:
            name, version = line.split("==", 1)
        else:  # name @ URL: a wheel or sdist file carries its version; a git URL does not
            name, url = (part.strip() for part in line.split(" @ ", 1))
            filename = unquote(Path(urlparse(url).path).name)
            parse = parse_wheel_filename if filename.endswith(".whl") else parse_sdist_filename
            try:
                version = str(parse(filename)[1])
            except ValueError:
                continue
        packages[canonicalize_name(name)] = version.strip()
    return packages


def colab_packages(image: str) -> dict[str, Version]:
    return {name: Version(v.split("+")[0]) for name, v in freeze_versions(image).items()}


def setup_requirements(*extras: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


def resolve(reqs: list[Requirement], image: str) -> tuple[dict[str, list[str]], set[str]]:
    """(Colab packages that would change -> the requirements they break, packages added)."""
    colab, changed, added = colab_packages(image), {}, set()
    queue = [(req, "") for req in reqs]
    while queue:
        req, extra = queue.pop()
        if req.marker and not req.marker.evaluate({**COLAB_ENV, "extra": extra}):
            continue
        name = canonicalize_name(req.name)
        if name in colab:
            if not req.specifier.contains(colab[name], prereleases=True):
                changed.setdefault(name, []).append(f"{req} (Colab has {colab[name]})")
            continue
        if name in added:
            continue
        added.add(name)
        for line in requires(name) or []:
            queue += [(Requirement(line), e) for e in ("", *req.extras)]
    return changed, added


@pytest.mark.parametrize("image", IMAGES)
def test_the_snapshots_are_colabs_images(image):
    packages = colab_packages(image)
    assert len(packages) > 500 and packages["torch"] == Version("2.11.0")
    assert freeze_versions(image)["torch"].endswith({"gpu": "+cu128", "cpu": "+cpu"}[image])
    assert ("nvidia-cublas-cu12" in packages) == (image == "gpu")
    header = IMAGES[image].read_text(encoding="utf-8").splitlines()[:2]
    assert "googlecolab/backend-info" in header[0] and "(2026-08-19)" in header[1]


@pytest.mark.parametrize("image", IMAGES)
def test_the_colab_install_changes_no_package_colab_ships(image):
    changed, added = resolve(setup_requirements("colab"), image)
    assert not changed, f"the Colab install would replace Colab's own packages: {changed}"
    assert {"setfit", "bitsandbytes", "gguf"} <= added
    assert "llama-cpp-python" not in added  # colab.py installs it, for the runtime's backend


@pytest.mark.parametrize("image", IMAGES)
def test_the_llama_cpp_wheel_installed_without_deps_finds_all_of_them(image):
    # colab.py installs its wheel with --no-deps: Colab or [colab] must bring what it needs
    _, added = resolve(setup_requirements("colab"), image)
    pinned = f"llama-cpp-python[server]=={colab.LLAMA_CPP_VERSION}"
    _, needs = resolve([Requirement(pinned)], image)
    assert needs - {"llama-cpp-python"} <= added, "add them to the [colab] extra"


def test_colab_builds_the_version_requirements_txt_pins():
    pins = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    assert f"llama-cpp-python[server]=={colab.LLAMA_CPP_VERSION}\n" in pins


@pytest.mark.parametrize("image", IMAGES)
def test_only_the_guard_notebook_changes_colab_packages_and_only_semgreps_pins(image):
    changed, added = resolve(setup_requirements("colab", "guard"), image)
    assert "codeshield" in added and "semgrep" in added
    assert set(changed) <= GUARD_CHANGES, f"unexpected changes: {changed}"


@pytest.mark.parametrize("pinned", ["pandas==3.1.1", "psutil==7.2.2", "openai==3.51.0"])
def test_a_pin_of_a_package_colab_ships_is_caught(pinned):
    # what the old install cell did with `-r requirements.txt`
    for image in IMAGES:
        changed, _ = resolve([Requirement(pinned)], image)
        assert canonicalize_name(Requirement(pinned).name) in changed, image


@pytest.mark.parametrize("image", IMAGES)
def test_every_package_the_library_imports_is_declared_and_colab_satisfies_it(image):
    declared = {canonicalize_name(r.name): r for r in setup_requirements()}
    assert "openai" in declared  # process.py and endpoint.py import it
    colab_versions = colab_packages(image)
    for name, req in declared.items():
        assert req.specifier.contains(colab_versions[name]), f"{req}: Colab has {name} " + str(
            colab_versions[name]
        )
    local = (ROOT / "constraints.txt").read_text(encoding="utf-8")
    pin = next(Requirement(x) for x in local.splitlines() if x.startswith("openai=="))
    assert declared["openai"].specifier.contains(next(iter(pin.specifier)).version)


# --- pip's own resolver, Python 3.13 ------------------------------------------------------

PYPI = "https://pypi.org/simple/"
PY313_PLACES = ["python3.13 on PATH", "~/.pyenv/versions/3.13*/bin/python", "/usr/bin/python3.13"]


def python313() -> str | None:
    """An interpreter for Colab's Python 3.13 with pip, from PY313_PLACES."""
    found = [shutil.which("python3.13")]
    found += sorted(glob(os.path.expanduser("~/.pyenv/versions/3.13*/bin/python")), reverse=True)
    found += ["/usr/bin/python3.13"]
    for python in filter(None, found):
        ok = subprocess.run([python, "-m", "pip", "--version"], capture_output=True)
        if Path(python).is_file() and ok.returncode == 0:
            return python
    return None


def pip_env() -> dict[str, str]:
    """PyPI only: no config file (this machine's adds local wheel folders and a constraints
    file a user's machine lacks) and no index or constraint from the environment."""
    dropped = {"PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_CONSTRAINT"}
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    return env | {"PIP_CONFIG_FILE": os.devnull}


@pytest.fixture(scope="module")
def fake_colab(tmp_path_factory):
    """image -> a Python 3.13 virtual environment holding an empty record of each of the
    image's packages, and the interpreter whose pip resolves into it."""
    python = python313()
    if python is None:
        pytest.skip(f"no Python 3.13 with pip here (looked for {', '.join(PY313_PLACES)})")
    try:
        urllib.request.urlopen(PYPI + "pip/", timeout=15).close()
    except OSError as err:
        pytest.skip(f"PyPI is not reachable here ({PYPI}): {err}")
    envs = {}
    for image in IMAGES:
        venv = tmp_path_factory.mktemp(f"colab-{image}")
        subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True)
        (site,) = venv.glob("lib/python3.13/site-packages")
        for name, version in freeze_versions(image).items():
            info = site / f"{name.replace('-', '_')}-{version}.dist-info"
            info.mkdir()
            meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            (info / "METADATA").write_text(meta)
            (info / "INSTALLER").write_text("pip\n")
        envs[image] = (python, venv / "bin" / "python")
    return envs


def pip_resolve(fake_colab, image: str, reqs: list[Requirement], tmp_path: Path):
    """(Colab package -> (Colab's version, pip's pick) for each it would replace, added)."""
    python, target = fake_colab[image]
    report = tmp_path / f"{image}.json"
    cmd = [python, "-m", "pip", "--python", str(target), "install", "--dry-run", "--quiet"]
    cmd += ["--report", str(report), "--index-url", PYPI]
    done = subprocess.run(
        cmd + [str(r) for r in reqs], capture_output=True, text=True, env=pip_env(), timeout=600
    )
    assert done.returncode == 0, done.stderr
    colab_versions = freeze_versions(image)
    changed, added = {}, set()
    for item in json.loads(report.read_text())["install"]:
        name, version = canonicalize_name(item["metadata"]["name"]), item["metadata"]["version"]
        if name in colab_versions:
            changed[name] = (colab_versions[name], version)
        else:
            added.add(name)
    return changed, added


@pytest.mark.parametrize("image", IMAGES)
def test_pips_resolver_on_python_313_changes_no_colab_package_for_colab(
    fake_colab, image, tmp_path
):
    changed, added = pip_resolve(fake_colab, image, setup_requirements("colab"), tmp_path)
    print(f"[colab] on the {image} image changes {changed or 'no Colab package'}; adds {added}")
    assert changed == {}, f"pip would replace these Colab packages: {changed}"
    assert {"setfit", "bitsandbytes", "gguf"} <= added


@pytest.mark.parametrize("image", IMAGES)
def test_pips_resolver_on_python_313_changes_only_peewee_for_guard(fake_colab, image, tmp_path):
    reqs = setup_requirements("colab", "guard")
    changed, added = pip_resolve(fake_colab, image, reqs, tmp_path)
    print(f"[colab,guard] on the {image} image changes {changed}")
    assert set(changed) == GUARD_CHANGES, f"pip would replace these Colab packages: {changed}"
    assert changed["peewee"][1].startswith("3.") and {"codeshield", "semgrep"} <= added
