"""Launch commands for TGI and vLLM, generated from a sharding plan.

The plan decides the shard count, the quantization and the context; these functions only
spell them in each engine's flags, so the command always matches the memory arithmetic.
Image tags are pinned: `latest` changes under you, a pinned tag gives the same server
next month. TGI has been in maintenance mode since December 2025 (3.3.7 is its last
release line); vLLM is the default suggestion for new deployments.
"""

from __future__ import annotations

import shlex

from ..core.errors import InputError, non_empty, whole
from . import catalog
from .sharding import ShardPlan

TGI_IMAGE = "ghcr.io/huggingface/text-generation-inference:3.3.7"
VLLM_IMAGE = "vllm/vllm-openai:v0.33.0"

# precision -> engine flag value; absent: the engine cannot quantize to it on the fly.
TGI_QUANTIZE = {"fp8": "fp8", "int8": "bitsandbytes", "nf4": "bitsandbytes-nf4"}
VLLM_QUANTIZATION = {"fp8": "fp8", "nf4": "bitsandbytes"}
DTYPES = {"fp16": "float16", "bf16": "bfloat16"}

# Reserved for generated tokens when a request uses the whole context.
DEFAULT_MAX_NEW_TOKENS = 1024


def _check_plan(plan: object, port: object) -> None:
    if not isinstance(plan, ShardPlan):
        raise InputError(
            f"plan is a {type(plan).__name__}; pass a ShardPlan from sharding.shard_plan()."
        )
    if whole("port", port) > 65535:
        raise InputError(f"port={port}: needs a TCP port, 1..65535.")


def _repo(plan: ShardPlan) -> str:
    spec = catalog.get(plan.model)
    if not spec.hf_repo:
        raise InputError(f"{spec.title} has no Hugging Face repository to serve from.")
    return spec.hf_repo


def _check_precision(plan: ShardPlan, table: dict[str, str], engine: str) -> str | None:
    """The engine's quantization value for the plan, None for 16-bit, or a clear error."""
    if plan.precision in DTYPES:
        return None
    if plan.precision not in table:
        known = ", ".join([*DTYPES, *table])
        raise InputError(
            f"{engine} cannot quantize to {plan.precision!r} while loading; plan with one of "
            f"{known}, or serve a pre-quantized checkpoint (AWQ/GPTQ)."
        )
    return table[plan.precision]


def tgi_command(
    plan: ShardPlan, port: int = 8080, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
) -> list[str]:
    """`docker run` for TGI with the plan's shards, quantization and token limits (argv)."""
    _check_plan(plan, port)
    if whole("max_new_tokens", max_new_tokens) >= plan.context_tokens:
        raise InputError(
            f"max_new_tokens={max_new_tokens} must be between 1 and the context "
            f"({plan.context_tokens} tokens) minus one."
        )
    quantize = _check_precision(plan, TGI_QUANTIZE, "TGI")
    cmd = [
        "docker", "run", "--gpus", "all", "--shm-size", "1g", "-p", f"{port}:80",
        "-e", "HF_TOKEN", "-v", "$PWD/data:/data", TGI_IMAGE,
        "--model-id", _repo(plan),
        "--num-shard", str(plan.shards),
        "--max-input-tokens", str(plan.context_tokens - max_new_tokens),
        "--max-total-tokens", str(plan.context_tokens),
    ]  # fmt: skip
    if quantize:
        cmd += ["--quantize", quantize]
    else:
        cmd += ["--dtype", DTYPES[plan.precision]]
    return cmd


def vllm_command(plan: ShardPlan, port: int = 8000) -> list[str]:
    """`docker run` for vLLM's OpenAI-compatible server with the plan's settings (argv)."""
    _check_plan(plan, port)
    quantization = _check_precision(plan, VLLM_QUANTIZATION, "vLLM")
    cmd = [
        "docker", "run", "--gpus", "all", "--ipc=host", "-p", f"{port}:8000",
        "-e", "HF_TOKEN", "-e", "HF_HOME=/hf-cache", "-v", "$HOME/.cache/huggingface:/hf-cache",
        VLLM_IMAGE,
        "--model", _repo(plan),
        "--tensor-parallel-size", str(plan.shards),
        "--max-model-len", str(plan.context_tokens),
    ]  # fmt: skip
    if quantization:
        cmd += ["--quantization", quantization]
    else:
        cmd += ["--dtype", DTYPES[plan.precision]]
    return cmd


def as_shell(argv: list[str]) -> str:
    """The command as one would type it: docker options, the image, then one flag per line.

    `$VARS` stay unquoted so the shell expands them; everything else is quoted if needed.
    """
    images = [i for i, a in enumerate(non_empty("argv", argv)) if a in (TGI_IMAGE, VLLM_IMAGE)]
    if not images or not all(isinstance(a, str) for a in argv):
        raise InputError("as_shell() needs a command from tgi_command() or vllm_command().")
    image = images[0]
    quoted = [a if a.startswith("$") else shlex.quote(a) for a in argv]
    lines = [" ".join(quoted[:image]), quoted[image]]
    for part in quoted[image + 1 :]:
        if part.startswith("--"):
            lines.append(part)
        else:
            lines[-1] += " " + part
    return " \\\n    ".join(lines)
