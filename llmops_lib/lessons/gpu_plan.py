"""Peak GPU memory of the GPU lessons (notebooks 02 and 07), step by step, from the planner.

Why: a T4 leaves about 15 GB usable, and a notebook that holds two 8B models at once runs
out of memory minutes in, after the downloads. The planner (memory.py) knows each model's
footprint before anything is loaded, so each of the two notebooks prints, wherever it runs,
what every step that uses the GPU holds there at its peak on the `colab-t4` profile and
whether that fits. The steps come from the same functions the cells call (the profile's
roles, precision_sweep.precisions, sweeps.offload_plan, ...); each holds one model at a
time, because the library releases every model before it loads the next.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..core.errors import lookup
from ..core.hardware import Hardware
from ..planning import memory, profiles, roofline
from ..planning.catalog import ModelSpec
from ..planning.provision import tiny_chat
from ..session import Session
from .nb02 import precision_sweep
from .nb07 import sweeps

# A T4's 16 GB less what the driver and CUDA context keep (torch shows 15.8 GB in total).
T4_USABLE_GB = 15.0
T4 = Hardware(
    runtime="colab",
    cpu_physical_cores=1,
    cpu_logical_cores=2,
    ram_gb=12.7,
    gpu_name="Tesla T4",
    gpu_vram_gb=T4_USABLE_GB,
    compute_capability=(7, 5),
    bf16=False,
    hf_token=True,
)
N_CTX = 2048  # what session.model() allocates by default, on either engine


@dataclass(frozen=True)
class Held:
    """One thing on the GPU during a step, and its planned GB."""

    what: str
    gb: float
    checked: bool = False  # the transformers engine refuses it before loading when it does not fit


def _transformers(spec: ModelSpec, precision: str, hw: Hardware) -> Held:
    plan = memory.machine_plan(spec, precision, hw, N_CTX)
    return Held(f"{spec.title} in {precision} on transformers", plan.total_gb, checked=True)


def _gguf(spec: ModelSpec, hw: Hardware, n_gpu_layers: int = -1) -> Held:
    """A GGUF on llama.cpp with `n_gpu_layers` of its layers on the GPU (-1: all)."""
    plan = memory.plan(spec, memory.gguf_type(spec), hw.gpu_vram_gb, N_CTX)
    share = 1.0 if n_gpu_layers < 0 else n_gpu_layers / spec.n_layers
    layers = "all" if share == 1 else f"{n_gpu_layers} of {spec.n_layers}"
    return Held(f"{spec.title} on llama.cpp, {layers} layers", share * plan.total_gb)


def _steps_02(session: Session) -> list[tuple[str, list[Held]]]:
    choice, hw = session.choice("classifier"), session.hardware
    spec = choice.spec
    raw = [(f"under the hood: raw {p}", [_transformers(spec, p, hw)]) for p in ("nf4", "int8")]
    model = [("3-6 · session.model('classifier')", [_transformers(spec, choice.precision, hw)])]
    sweep = [
        (f"7 · precision sweep: {p}", [_transformers(spec, p, hw)])
        for p in precision_sweep.precisions(session)
    ]
    return raw + model + sweep


def _steps_07(session: Session) -> list[tuple[str, list[Held]]]:
    chat, hw = session.spec("chat"), session.hardware
    copy_gb = 2 * roofline.GPU_COPY_MB / 1000
    offload = [
        (f"4 · offload sweep: {label}", [_gguf(chat, hw, n)] if n else [])
        for label, n in sweeps.offload_plan(chat.n_layers).items()
    ]
    tiny = tiny_chat()
    backends = [("5 · backends: llama.cpp GGUF", [_gguf(tiny, hw)])] + [
        (f"5 · backends: transformers {p}", [_transformers(tiny, p, hw)])
        for p in sweeps.BACKEND_PRECISIONS
    ]
    return [
        ("3 · thread sweep (n_gpu_layers=0)", []),
        ("3 · llama-bench (its own process)", [_gguf(chat, hw)]),
        *offload,
        *backends,
        ("6 · GPU copy bandwidth", [Held("two copy buffers", copy_gb)]),
        ("7 · the raw call: the model's own llama_cpp.Llama", [_gguf(chat, hw)]),
        ("7 · library vs llama-cpp-python (one engine)", [_gguf(chat, hw)]),
    ]


STEPS = {"02": _steps_02, "07": _steps_07}


def peaks(notebook: str, profile: str = "colab-t4", hw: Hardware = T4) -> pd.DataFrame:
    """One row per step of `notebook` ("02" or "07") that uses the GPU: what it holds there
    at its peak on `profile`, the planned GB (weights + KV cache for the default context
    + overhead, from memory.py) and whether that fits in `hw`'s GPU memory. A step the
    planner says does not fit is refused by the transformers engine's check before it loads."""
    session = Session(profile=profiles.get(profile), hardware=hw)
    steps = lookup(STEPS, notebook, "GPU notebook")(session)
    rows = []
    for step, held in steps:
        planned = sum(h.gb for h in held)
        verdict = "yes"
        if planned > hw.gpu_vram_gb:
            refused = all(h.checked for h in held)
            verdict = "no: refused before loading" if refused else "NO: out of memory"
        rows.append(
            {
                "step": step,
                "held on the GPU": " + ".join(h.what for h in held) or "nothing",
                "planned GB": round(planned, 1),
                f"fits {hw.gpu_vram_gb:g} GB": verdict,
            }
        )
    return pd.DataFrame(rows).set_index("step")
