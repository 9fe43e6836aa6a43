"""setup(): one call, offline for the tiny profile, a summary a person can read."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
from dataclasses import replace
from importlib.metadata import files

import pytest

import llmops_lib
from llmops_lib.core.errors import InputError, UnknownNameError
from llmops_lib.planning import catalog, provision


def test_setup_prints_summary_without_network(no_network, capsys, monkeypatch):
    monkeypatch.setenv("LLMOPS_PROFILE", "tiny")
    session = llmops_lib.setup()
    out = capsys.readouterr().out
    assert "profile" in out and "tiny" in out and "CPU cores" in out
    assert "role: chat" in out and "SmolLM2 135M Instruct" in out
    assert session.profile.name == "tiny"
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_setup_with_unknown_profile_fails_clearly():
    with pytest.raises(ValueError, match="'nonsense'.*tiny"):
        llmops_lib.setup(profile="nonsense")


@pytest.mark.model
def test_tiny_model_files_come_from_packages_without_network(no_network):
    gguf = provision.tiny_gguf()
    # The hash pip recorded when it installed the package (RECORD: urlsafe base64 SHA-256).
    packaged = provision.tiny_chat().offline
    (recorded,) = [f for f in files(packaged.package) if f.name == gguf.name]
    digest = base64.urlsafe_b64encode(hashlib.sha256(gguf.read_bytes()).digest())
    assert recorded.hash.mode == "sha256" and digest.rstrip(b"=").decode() == recorded.hash.value
    encoder = provision.encoder_path(catalog.get("all-minilm-l6-v2"))
    assert (encoder / "model.safetensors").is_file()


def test_model_refuses_a_role_that_is_not_a_chat_engine(session):
    with pytest.raises(ValueError, match="setfit.*session.train\\('encoder'"):
        session.model("encoder")
    with pytest.raises(UnknownNameError, match="'translator'.*chat, classifier"):
        session.model("translator")


@pytest.mark.parametrize(
    ("role", "options", "named"),
    [
        ("chat", {"bogus_kwarg": 1}, r"'bogus_kwarg'. Valid: .*n_ctx, .*n_threads,"),
        ("chat", {"n_ctxx": 4096}, "llamacpp engine option 'n_ctxx'"),  # llama_cpp would ignore it
        ("classifier", {"n_threads": 2}, r"transformers engine option 'n_threads'. Valid: n_ctx\."),
        ("chat", {"precision": "nf4"}, "precision='nf4': a llama.cpp model runs in its GGUF's own"),
    ],
)
def test_an_option_the_engine_cannot_take_is_refused_before_any_loading(
    session, monkeypatch, role, options, named
):
    def fetch(*args, **kwargs):
        raise AssertionError("a model file was fetched before the options were checked")

    for finder in ("gguf_path", "hf_dir", "encoder_path"):
        monkeypatch.setattr(provision, finder, fetch)
    with pytest.raises(InputError, match=named):
        session.model(role, **options)


@pytest.fixture
def unreachable_hub(monkeypatch, tmp_path):
    """The Hub's address is a local port nothing listens on; an empty Hub cache."""
    from huggingface_hub import constants

    from llmops_lib.engines.process import free_port

    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


@pytest.fixture
def no_hub_download(monkeypatch):
    import huggingface_hub

    def download(*args, **kwargs):
        raise AssertionError("hf_hub_download retries for ~25 s before it says anything")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)


LLAMA3_GGUF = catalog.get("llama-3-8b-instruct-gguf")


def test_an_unreachable_hub_is_called_offline_at_once(unreachable_hub, no_hub_download):
    with pytest.raises(
        provision.ModelAccessError, match=r"Llama 3 8B.*cannot be reached: offline.*'tiny'"
    ):
        provision.hub_gguf(LLAMA3_GGUF)


def test_offline_a_file_in_the_hub_cache_is_used_without_retries(unreachable_hub, no_hub_download):
    repo = unreachable_hub / f"models--{LLAMA3_GGUF.gguf_repo.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    cached = repo / "snapshots" / "0123abcd" / LLAMA3_GGUF.gguf_file
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"GGUF")
    assert provision.hub_gguf(LLAMA3_GGUF) == cached


def test_import_and_setup_from_a_fresh_interpreter():
    """The README's promise: `python -c "import llmops_lib; llmops_lib.setup()"` works."""
    env = {**os.environ, "LLMOPS_PROFILE": "tiny"}
    out = subprocess.run(
        [sys.executable, "-c", "import llmops_lib; llmops_lib.setup()"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    ).stdout
    assert "tiny" in out


def test_a_gpu_notebook_without_a_gpu_says_so_loudly(capsys, monkeypatch):
    from llmops_lib.core import hardware

    monkeypatch.setenv("LLMOPS_PROFILE", "tiny")
    real = hardware.detect
    monkeypatch.setattr(hardware, "detect", lambda **kw: replace(real(**kw), gpu_name=None))
    llmops_lib.setup(quiet=True, wants_gpu=True)
    assert "written for a GPU" in capsys.readouterr().out
    llmops_lib.setup(quiet=True)
    assert capsys.readouterr().out == ""


def test_offline_holds_when_hugging_face_was_imported_before_setup():
    code = (
        "import datasets, huggingface_hub, transformers\n"
        "assert not huggingface_hub.is_offline_mode()\n"
        "import llmops_lib\n"
        "llmops_lib.setup(profile='tiny', quiet=True)\n"
        "from transformers.utils.hub import is_offline_mode  # what transformers asks\n"
        "print(huggingface_hub.constants.HF_HUB_OFFLINE, is_offline_mode(),\n"
        "      datasets.config.HF_HUB_OFFLINE)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in llmops_lib.OFFLINE_ENV}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "True", "True"]
