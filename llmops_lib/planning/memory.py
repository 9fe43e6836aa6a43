"""Memory planner: weights + KV cache for a model, and whether that fits on a GPU.

Pure arithmetic on the catalog's architecture numbers, so it can answer "does Llama 3.1 70B
fit on two A100s?" before anything is downloaded. Units follow the Hugging Face Llama 3.1
blog post (https://huggingface.co/blog/llama31), which the tests reproduce: weights in
decimal GB (8.03e9 params x 2 bytes = 16 GB), KV cache in binary GiB (its table says "GB").
The planner itself works in bytes; `GB` and `GIB` convert.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import pandas as pd
import psutil

from ..core.errors import InputError, lookup, non_empty, positive, unknown, whole
from ..core.hardware import Hardware
from . import catalog
from .catalog import ModelSpec

GB = 1e9
GIB = 2**30

# Every parameter stored at the same width: the blog post's arithmetic.
UNIFORM_BITS: dict[str, float] = {"fp32": 32, "fp16": 16, "bf16": 16, "fp8": 8, "int4": 4}

# bitsandbytes quantizes the Linear layers of the transformer blocks only; embeddings,
# norms and the output head stay in the compute dtype (`keep_bytes` per value).
# int8 (LLM.int8): one int8 per weight plus one fp32 scale per row (negligible).
# nf4: 4 bits + one fp32 absmax per block of 64 = 4.5 bits; double quantization stores the
# absmax in 8 bits with one fp32 scale per 256 blocks: 4 + 8/64 + 32/(64*256) bits.
BNB_BITS: dict[str, float] = {
    "int8": 8.0,
    "nf4": 4 + 8 / 64 + 32 / (64 * 256),
    "nf4-no-dq": 4 + 32 / 64,
}

# GGUF files: average bits per weight over the whole file (k-quant mixes keep some tensors
# at higher precision). Basic types from their block layout; mixes from llama.cpp's
# tools/quantize README (measured on Llama 2 7B).
GGUF_BITS: dict[str, float] = {
    "F32": 32,
    "F16": 16,
    "Q8_0": 8.5,
    "Q6_K": 6.56,
    "Q5_K_M": 5.68,
    "Q5_K_S": 5.52,
    "Q5_0": 5.5,
    "Q4_K_M": 4.84,
    "Q4_K_S": 4.58,
    "Q4_1": 5.0,
    "Q4_0": 4.5,
    "Q3_K_L": 4.27,
    "Q3_K_M": 3.91,
    "Q3_K_S": 3.50,
    "Q2_K": 3.35,
}

# Nominal memory of the GPUs a workshop meets, in GB. The driver and CUDA context take a
# few hundred MB of it (a T4 shows ~15.8 GB in torch); the overhead below covers that.
GPUS: dict[str, float] = {"T4": 16, "L4": 24, "A100-40": 40, "A100-80": 80, "H100": 80}

PRECISIONS = (*UNIFORM_BITS, *BNB_BITS, *GGUF_BITS)

# llama.cpp's KV-cache types (`-ctk`/`-ctv`, the cache_type_k/v of llama-cpp-python) in bytes
# per stored value. The quantized ones are ggml blocks of 32 values (ggml-common.h): q8_0 is
# 32 int8 + one fp16 scale = 34 bytes, q4_0 32 nibbles + the scale = 18; q4_1 and q5_1 add an
# fp16 minimum, q5_0/q5_1 4 bytes of fifth bits; iq4_nl has q4_0's layout.
KV_TYPES: dict[str, float] = {
    "f32": 4,
    "f16": 2,
    "bf16": 2,
    "q8_0": 34 / 32,
    "q5_1": 24 / 32,
    "q5_0": 22 / 32,
    "q4_1": 20 / 32,
    "q4_0": 18 / 32,
    "iq4_nl": 18 / 32,
}

# CUDA context, activations and allocator slack, as a share of the weights: the usual
# rule of thumb "weights x 1.2".
OVERHEAD_FRACTION = 0.2


def _gguf_key(precision: str) -> str | None:
    key = precision.upper().removeprefix("GGUF:").removeprefix("GGUF-")
    return key if key in GGUF_BITS else None


def bits_per_weight(precision: str) -> float:
    """Average bits per quantized weight; an unknown precision lists the known ones."""
    if isinstance(precision, str):
        if precision in UNIFORM_BITS:
            return UNIFORM_BITS[precision]
        if precision in BNB_BITS:
            return BNB_BITS[precision]
        key = _gguf_key(precision)
        if key:
            return GGUF_BITS[key]
    raise unknown(precision, "precision", PRECISIONS, "GGUF types also as 'gguf:Q4_K_M'.")


def gguf_type(spec: ModelSpec | str) -> str:
    """The GGUF type of a catalog model's file, from its name ('*Q6_K.gguf' -> 'Q6_K')."""
    spec = catalog.get(spec)
    name = spec.gguf_file or (spec.offline.path if spec.offline else "")
    stem = name.upper().removesuffix(".GGUF")
    for key in GGUF_BITS:
        before = stem[: -len(key)]
        if stem.endswith(key) and not (before and before[-1].isalnum()):
            return key
    raise InputError(
        f"{spec.title}: no GGUF type ({', '.join(GGUF_BITS)}) at the end of its file name "
        f"{name!r}; name the file like 'model.Q4_K_M.gguf' or add the type to GGUF_BITS."
    )


def unquantized_params(spec: ModelSpec) -> float:
    """Parameters bitsandbytes leaves in 16/32-bit: token embeddings and the output head.

    With tied embeddings the head is the embedding matrix, so one matrix stays, not two.
    """
    matrices = 1 if spec.tied_embeddings else 2
    return matrices * spec.vocab_size * spec.hidden_size


def weight_bytes(spec: ModelSpec | str, precision: str, keep_bytes: float = 2) -> float:
    """Bytes the weights of `spec` take in `precision`.

    fp32/fp16/bf16/fp8/int4 and GGUF types put every parameter at the same width; the
    bitsandbytes types int8/nf4/nf4-no-dq quantize only the Linear layers and keep the
    embeddings and head at `keep_bytes` per value (2 on a GPU, 4 for fp32 on a CPU).
    """
    spec = catalog.get(spec)
    keep_bytes = positive("keep_bytes", keep_bytes)
    bits = bits_per_weight(precision)
    params = spec.params_b * 1e9
    if precision not in BNB_BITS:
        return params * bits / 8
    kept = unquantized_params(spec)
    return (params - kept) * bits / 8 + kept * keep_bytes


def kv_bytes_per_value(kv_type: str) -> float:
    """Bytes one cached key or value takes in llama.cpp's cache type `kv_type` (f16, q8_0, ...)."""
    return lookup(
        KV_TYPES, kv_type, "KV cache type", "llama.cpp's -ctk/-ctv spell them in lower case."
    )


def kv_cache_bytes(
    spec: ModelSpec | str,
    context_tokens: int,
    batch: int = 1,
    kv_type: str = "f16",
    swa_full: bool = False,
) -> float:
    """Bytes of the key/value cache for `batch` sequences of `context_tokens` tokens.

    Per token and layer: K and V, each n_kv_heads x head_dim values, so grouped-query
    attention (few KV heads) shrinks it; `kv_type` is the cache's number format (KV_TYPES:
    f16 is llama.cpp's and the Hugging Face blog's default, q8_0 about half of it).
    Sliding-window layers (Gemma) hold only the last `sliding_window` tokens, unless
    `swa_full`: llama.cpp by default keeps the whole context in them too, so that cached
    prompts can be reused.
    """
    spec = catalog.get(spec)
    if spec.kind != "decoder":
        raise InputError(f"{spec.title} is an {spec.kind}: it generates nothing, has no KV cache.")
    if whole("context_tokens", context_tokens) > spec.max_context:
        raise InputError(
            f"context_tokens={context_tokens} is outside 1..{spec.max_context}, "
            f"the context {spec.title} was trained for."
        )
    whole("batch", batch)
    per_token_layer = 2 * spec.n_kv_heads * spec.head_dim * kv_bytes_per_value(kv_type)
    full_layers = spec.global_layers()
    window = context_tokens
    if spec.sliding_window and not swa_full:
        window = min(context_tokens, spec.sliding_window)
    tokens = full_layers * context_tokens + (spec.n_layers - full_layers) * window
    return batch * per_token_layer * tokens


def gpu_memory_gb(gpu: str | float) -> float:
    """Memory in GB of a GPU named in `GPUS`, or `gpu` itself when it is a number of GB."""
    if isinstance(gpu, numbers.Real) and not isinstance(gpu, bool):
        return positive("gpu", gpu)
    for name, gb in GPUS.items():
        if str(gpu).upper() == name.upper():
            return gb
    raise unknown(
        gpu,
        "GPU",
        (f"{n} ({g} GB)" for n, g in GPUS.items()),
        "For any other GPU pass its memory in GB as a number, e.g. gpu_memory_gb(12).",
    )


def _gpu_label(gpu: str | float) -> str:
    return gpu if isinstance(gpu, str) else f"{gpu:g} GB"


@dataclass(frozen=True)
class Plan:
    """Memory needed by one model in one precision, against one GPU (all in GB)."""

    model: str
    precision: str
    gpu: str
    gpu_gb: float
    weights_gb: float
    kv_gb: float
    overhead_gb: float

    @property
    def total_gb(self) -> float:
        return self.weights_gb + self.kv_gb + self.overhead_gb

    @property
    def headroom_gb(self) -> float:
        return self.gpu_gb - self.total_gb

    @property
    def fits(self) -> bool:
        return self.headroom_gb >= 0

    @property
    def verdict(self) -> str:
        if self.fits:
            return f"fits ({self.headroom_gb:.1f} GB free)"
        return f"does not fit ({-self.headroom_gb:.1f} GB short)"


def plan(
    spec: ModelSpec | str,
    precision: str,
    gpu: str | float,
    context_tokens: int = 4096,
    batch: int = 1,
    keep_bytes: float = 2,
    kv_type: str = "f16",
) -> Plan:
    """Weights + KV cache (in `kv_type`, 16-bit by default) + overhead for `spec` in
    `precision` on `gpu`.

    A context beyond the one the model was trained for is refused, not planned for less.
    """
    spec = catalog.get(spec)
    gpu_gb = gpu_memory_gb(gpu)
    weights = weight_bytes(spec, precision, keep_bytes=keep_bytes) / GB
    kv = kv_cache_bytes(spec, context_tokens, batch, kv_type) / GB
    return Plan(
        model=spec.key,
        precision=precision,
        gpu=_gpu_label(gpu),
        gpu_gb=gpu_gb,
        weights_gb=weights,
        kv_gb=kv,
        overhead_gb=OVERHEAD_FRACTION * weights,
    )


TRANSFORMERS_PRECISIONS = ("fp32", "fp16", "bf16", "int8", "nf4")
COMPUTE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def compute_type(precision: str, hw: Hardware) -> str:
    """The float type (torch's name) a transformers model computes in and keeps its
    unquantized weights in.

    fp32/fp16/bf16 say it themselves. int8/nf4 only store the Linear weights compressed
    and compute in a float type: bfloat16 on GPUs that have it (compute capability >= 8.0),
    float16 on older ones like the T4, float32 on a CPU (slow 16-bit there; and Gemma's
    activations overflow float16). LLM.int8 casts the inputs of its int8 matmuls to float16
    itself, whatever this is.
    """
    if precision not in TRANSFORMERS_PRECISIONS:
        raise unknown(precision, "transformers precision", TRANSFORMERS_PRECISIONS)
    fixed = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
    if precision in fixed:
        return fixed[precision]
    if not hw.has_gpu:
        return "float32"
    return "bfloat16" if hw.bf16 else "float16"


def _budget_gb(hw: Hardware) -> float:
    """Memory a model may use: the GPU's, or the RAM available right now on a CPU."""
    if hw.has_gpu:
        return float(hw.gpu_vram_gb)
    return psutil.virtual_memory().available / GB


def machine_plan(spec: ModelSpec, precision: str, hw: Hardware, context_tokens: int = 2048) -> Plan:
    """The planner's verdict for a transformers model on `hw`, with the unquantized parts
    in its compute type."""
    keep_bytes = COMPUTE_BYTES[compute_type(precision, hw)]
    return plan(spec, precision, _budget_gb(hw), context_tokens, keep_bytes=keep_bytes)


def max_context(
    spec: ModelSpec | str,
    precision: str,
    gpu: str | float,
    kv_type: str = "f16",
    batch: int = 1,
    keep_bytes: float = 2,
) -> int:
    """The longest context (tokens per sequence, at most the trained one) whose KV cache in
    `kv_type` fits on `gpu` beside the weights and overhead of `precision`, as plan() counts
    them; 0 when not even one token fits.

    Why: past the weights, the context is what a GPU's memory buys, and a quantized cache
    (q8_0: about half of f16) buys nearly twice as much of it.
    """
    spec = catalog.get(spec)
    free = gpu_memory_gb(gpu) * GB - (1 + OVERHEAD_FRACTION) * weight_bytes(
        spec, precision, keep_bytes
    )
    if kv_cache_bytes(spec, 1, batch, kv_type) > free:
        return 0
    low, high = 1, spec.max_context  # the cache grows with the context: bisect
    while low < high:
        mid = (low + high + 1) // 2
        if kv_cache_bytes(spec, mid, batch, kv_type) <= free:
            low = mid
        else:
            high = mid - 1
    return low


def fit_table(
    specs: list[ModelSpec],
    precisions: tuple[str, ...] = ("bf16", "int8", "nf4"),
    gpus: tuple[str, ...] = tuple(GPUS),
    context_tokens: int = 4096,
    context_gpu: str | float = "T4",
    kv_types: tuple[str, ...] = ("f16", "q8_0"),
) -> pd.DataFrame:
    """Models x precision rows, one column per GPU: total GB needed and the verdict, then
    how much context fits on `context_gpu` with each KV cache type ("-": the weights do not
    fit)."""
    rows = []
    for spec in map(catalog.get, non_empty("specs", specs)):
        for precision in non_empty("precisions", precisions):
            plans = [plan(spec, precision, gpu, context_tokens) for gpu in non_empty("gpus", gpus)]
            row = {
                "model": spec.key,
                "precision": precision,
                "weights GB": round(plans[0].weights_gb, 2),
                "KV GB": round(plans[0].kv_gb, 2),
                "total GB": round(plans[0].total_gb, 1),
            }
            row.update({p.gpu: "fits" if p.fits else "-" for p in plans})
            for kv_type in non_empty("kv_types", kv_types):
                tokens = max_context(spec, precision, context_gpu, kv_type)
                row[f"{_gpu_label(context_gpu)} context ({kv_type} KV)"] = tokens or "-"
            rows.append(row)
    return pd.DataFrame(rows).set_index(["model", "precision"])


# https://huggingface.co/blog/llama31, "Inference Memory Requirements": weights in GB.
LLAMA31_BLOG_WEIGHTS_GB = {
    ("llama-3.1-8b-instruct", "fp16"): 16,
    ("llama-3.1-8b-instruct", "fp8"): 8,
    ("llama-3.1-8b-instruct", "int4"): 4,
    ("llama-3.1-70b-instruct", "fp16"): 140,
    ("llama-3.1-70b-instruct", "fp8"): 70,
    ("llama-3.1-70b-instruct", "int4"): 35,
}
# The same post's FP16 KV-cache table. Its "GB" are GiB, and its "1k" is 1024 tokens while
# "16k" and "128k" are 16,000 and 128,000 tokens (huggingface/blog issue #2345 works it out).
LLAMA31_BLOG_KV_GIB = {
    ("llama-3.1-8b-instruct", 1024): 0.125,
    ("llama-3.1-8b-instruct", 16_000): 1.95,
    ("llama-3.1-8b-instruct", 128_000): 15.62,
    ("llama-3.1-70b-instruct", 1024): 0.313,
    ("llama-3.1-70b-instruct", 16_000): 4.88,
    ("llama-3.1-70b-instruct", 128_000): 39.06,
}


def versus_llama31_blog() -> pd.DataFrame:
    """The planner beside the Llama 3.1 blog post's published figures, with the deviation.

    Why: a planner is only worth trusting once it reproduces numbers someone else published.
    """
    from .catalog import get

    figures = [
        (key, precision.upper(), published, weight_bytes(get(key), precision) / GB)
        for (key, precision), published in LLAMA31_BLOG_WEIGHTS_GB.items()
    ] + [
        (key, f"KV {tokens // 1000}k", published, kv_cache_bytes(get(key), tokens) / GIB)
        for (key, tokens), published in LLAMA31_BLOG_KV_GIB.items()
    ]
    rows = [
        {
            "model": key,
            "figure": label,
            "published": published,
            "planner": round(planner, 3),
            "deviation %": round(100 * (planner - published) / published, 2),
        }
        for key, label, published, planner in figures
    ]
    order = list(dict.fromkeys(row["figure"] for row in rows))
    table = pd.DataFrame(rows).pivot(
        index="figure", columns="model", values=["published", "planner", "deviation %"]
    )
    return table.loc[order]
