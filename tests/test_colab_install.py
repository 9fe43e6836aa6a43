"""The Colab install, resolved offline against Colab's published package list.

tests/colab/pip-freeze.gpu.txt is the GPU runtime's `pip freeze` (googlecolab/backend-info).
The resolution walks the requirements of what the setup cell installs; for a package Colab
ships, Colab's version must already satisfy every requirement on it (pip would otherwise
upgrade or downgrade it, and Colab asks to restart the runtime); a package Colab lacks is
added, and its own requirements are walked from its metadata as installed here (the same
pinned versions). An approximation of pip's resolver, but one that needs no network.
"""

from __future__ import annotations

import tomllib
from importlib.metadata import requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from llmops_lib import colab

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = ROOT / "tests" / "colab" / "pip-freeze.gpu.txt"
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
# which pins peewee~=3.14 (Colab has 4.x).
GUARD_CHANGES = {"peewee"}


def colab_packages() -> dict[str, Version]:
    packages = {}
    for line in SNAPSHOT.read_text(encoding="utf-8").splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            packages[canonicalize_name(name)] = Version(version.split("+")[0])
    return packages


def setup_requirements(*extras: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


def resolve(reqs: list[Requirement]) -> tuple[dict[str, list[str]], set[str]]:
    """(Colab packages that would change -> the requirements they break, packages added)."""
    colab, changed, added = colab_packages(), {}, set()
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


def test_the_snapshot_is_colabs_gpu_image():
    packages = colab_packages()
    assert len(packages) > 500 and packages["torch"].major == 2 and "transformers" in packages


def test_the_colab_install_changes_no_package_colab_ships():
    changed, added = resolve(setup_requirements("colab"))
    assert not changed, f"the Colab install would replace Colab's own packages: {changed}"
    assert {"setfit", "bitsandbytes", "gguf"} <= added
    assert "llama-cpp-python" not in added  # colab.py installs it, for the runtime's backend


def test_the_llama_cpp_wheel_installed_without_deps_finds_all_of_them():
    # colab.py installs its wheel with --no-deps: Colab or [colab] must bring what it needs
    _, added = resolve(setup_requirements("colab"))
    pinned = f"llama-cpp-python[server]=={colab.LLAMA_CPP_VERSION}"
    _, needs = resolve([Requirement(pinned)])
    assert needs - {"llama-cpp-python"} <= added, "add them to the [colab] extra"


def test_colab_builds_the_version_requirements_txt_pins():
    pins = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    assert f"llama-cpp-python[server]=={colab.LLAMA_CPP_VERSION}\n" in pins


def test_only_the_guard_notebook_changes_colab_packages_and_only_semgreps_pins():
    changed, added = resolve(setup_requirements("colab", "guard"))
    assert "codeshield" in added and "semgrep" in added
    assert set(changed) <= GUARD_CHANGES, f"unexpected changes: {changed}"


@pytest.mark.parametrize("pinned", ["pandas==3.1.1", "psutil==7.2.2", "openai==3.51.0"])
def test_a_pin_of_a_package_colab_ships_is_caught(pinned):
    # what the old install cell did with `-r requirements.txt`
    changed, _ = resolve([Requirement(pinned)])
    assert canonicalize_name(Requirement(pinned).name) in changed
