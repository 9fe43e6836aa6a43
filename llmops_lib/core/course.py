"""The course map: which notebook answers which question, what it needs, how long it runs.

Notebook 00 prints this map and notebook 99 names the notebook to run for a missing
result, so the list lives here once. Run times come from the notebooks themselves:
`make notebooks` executes each one with nbconvert, which stores when every cell started
and finished in the cell's metadata; the span from the first start to the last finish is
the notebook's wall time in the `tiny` profile on the machine that ran it. Where a
notebook has no stored run (a fresh copy on Colab, a notebook not executed yet), the
map says so instead of guessing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from .errors import InputError


@dataclass(frozen=True)
class Notebook:
    """One notebook of the course: its file, the question it answers, the GPU it wants, what
    it covers (README.md's table, written from here by `python -m llmops_lib.core.links`)."""

    file: str
    question: str
    gpu: str  # what the full-size models need; every notebook runs on the tiny profile
    lesson: str
    # A fragment of the first code cell after setup whose answer comes from a model, a server
    # or an endpoint: the Colab replica times it from the kernel's start. None: no model.
    first_answer: str | None

    @property
    def number(self) -> str:
        """'06' for 06_guard_companion.ipynb: how the course and its messages name it."""
        return self.file[:2]


NOTEBOOKS: tuple[Notebook, ...] = (
    Notebook(
        "00_why_on_prem.ipynb",
        "Why run models on your own hardware at all?",
        "none",
        (
            "Why run models yourself (privacy, availability, latency, cost, a fixed model "
            "version) and the course map: each notebook's question, GPU needs and run time"
        ),
        'session.model_path("chat")',
    ),
    Notebook(
        "01_past_encoder_classifier_cpu.ipynb",
        "Does a small encoder, trained on a few examples, classify assessments?",
        "none",
        "Past: a few-shot SetFit classifier on a small sentence encoder, EN and DE, on a CPU",
        "raw.predict(",
    ),
    Notebook(
        "02_present_quantized_llama.ipynb",
        "How much memory does an LLM need in 16/8/4 bits, and how well does it classify?",
        "Colab T4 or L4 for Llama 3.1 8B",
        (
            "Present: transformers + bitsandbytes (bf16/fp16/int8/nf4), a memory planner, Yes/No "
            "assessment classification"
        ),
        "AutoModelForCausalLM.from_pretrained(",
    ),
    Notebook(
        "03_future_multi_gpu_tgi.ipynb",
        "How many GPUs does a model need, and how does a server cope with many users?",
        "several GPUs for 70B models (planned on paper here)",
        (
            "Future: sharding plans, TGI/vLLM launch commands, an OpenAI-compatible server, a "
            "multi-user load test: one-at-a-time vs continuous batching (`llama-server -np N`), "
            "answers as JSON that follows a schema (`response_format`, validated fail-closed)"
        ),
        "endpoint.chat(",
    ),
    Notebook(
        "04_cpu_only.ipynb",
        "How fast does a GGUF model answer on a CPU alone?",
        "none",
        "CPU-only inference with llama.cpp: load time, tokens/s, the raw response JSON",
        "create_chat_completion(",
    ),
    Notebook(
        "05_conversations.ipynb",
        "How does a chat keep its history inside the context window?",
        "none",
        "Multi-turn chat: history, token budget and trimming, streaming, the cost of history",
        "model = session.model(",
    ),
    Notebook(
        "06_guard_companion.ipynb",
        "How do you keep unsafe requests and replies out, and what does it cost?",
        "none (Llama Guard 8B: a T4 or a fast CPU)",
        (
            "Llama Guard around a chat model, fail-closed verdicts, an offline prompt guard, code"
            " scanning"
        ),
        "llm(prompt",
    ),
    Notebook(
        "07_cpu_vs_gpu.ipynb",
        "Where does the time go per token: CPU vs GPU, against the memory roofline?",
        "optional: Colab T4/L4 for the GPU columns",
        (
            "A benchmark harness: threads, `llama-bench` as the raw-engine baseline, GPU offload,"
            " llama.cpp vs transformers, the memory-bandwidth roofline"
        ),
        "sweeps.thread_sweep(",
    ),
    Notebook(
        "08_evaluation.ipynb",
        "Can a user trust one prediction, and what do labels and a judge cost?",
        "none",
        (
            "Evaluation in production: a traffic light from each prediction's uncertainty, an LLM"
            " judge measured against the truth, an offline dashboard, what ground truth costs"
        ),
        "encoder.train(",
    ),
    Notebook(
        "09_quantization_quality.ipynb",
        "What does each quantization type cost in quality, size and speed?",
        "none",
        (
            "Quantization quality: `llama-quantize` to every common type (and with an importance "
            "matrix), perplexity and KL divergence against F16, speed against the roofline, the "
            "slides' table beside ours; the KV cache in f16, q8_0 and q4_0 (planned vs allocated "
            "bytes, decode speed, KL divergence)"
        ),
        "quant_sweep.measure(",
    ),
    Notebook(
        "10_packaging_a_service.ipynb",
        "How do you turn a model into a service others can call?",
        "none",
        (
            "A FastAPI completion service around llama.cpp: load once, strict validation, a "
            "bounded queue (429 + Retry-After), load vs `llama-server -np N`, the Docker image "
            "(`make image`, `make test-image`)"
        ),
        "model.chat(question",
    ),
    Notebook(
        "11_drift_detection.ipynb",
        "How do you know the model is still right next month, without labels?",
        "none",
        (
            "Drift without labels: two-sample tests (KS, chi-squared) with PSI read against its "
            "no-drift levels, false-alarm and detection rates over many batches, embedding drift "
            "with a domain classifier, what Evidently adds"
        ),
        "encoder.train(",
    ),
    Notebook(
        "99_wrap_up.ipynb",
        "Side by side: would an encoder do the job?",
        "none",
        (
            "The figures the notebooks saved in `results/`, side by side, and the course's "
            "question answered from them: would an encoder do the job? What a token costs on your"
            " hardware against an API's price, and the break-even volume"
        ),
        None,
    ),
)


README_TABLE = (
    "<!-- notebooks: written from core/course.py by python -m llmops_lib.core.links -->",
    "<!-- /notebooks -->",
)


def readme_table() -> str:
    """README.md's table of notebooks, between its two README_TABLE marks."""
    rows = [f"| `{nb.file}` | {nb.lesson} |" for nb in NOTEBOOKS]
    return "\n".join(
        [README_TABLE[0], "| notebook | lesson |", "|---|---|", *rows, README_TABLE[1]]
    )


def with_readme_table(readme: str) -> str:
    """`readme` with its table of notebooks written anew (an InputError if it has no marks)."""
    start, end = readme.find(README_TABLE[0]), readme.find(README_TABLE[1])
    if start < 0 or end < start:
        raise InputError(f"README.md lacks the marks of its notebook table: {README_TABLE}.")
    return readme[:start] + readme_table() + readme[end + len(README_TABLE[1]) :]


def stored_wall_s(path: str | Path) -> float | None:
    """Seconds from the first cell's start to the last cell's end, as nbconvert stored them.

    None when the notebook carries no timing (committed without outputs, or never run).
    """
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    stamps = [
        datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        for cell in nb.get("cells", [])
        for key, stamp in cell.get("metadata", {}).get("execution", {}).items()
        if key in ("iopub.execute_input", "shell.execute_reply")
    ]
    return (max(stamps) - min(stamps)).total_seconds() if stamps else None


def course_map(notebooks_dir: str | Path = ".") -> pd.DataFrame:
    """One row per notebook: question, GPU, and the tiny-profile time its stored run shows.

    `notebooks_dir` is where the .ipynb files are (the notebooks' own folder by default);
    a notebook not there, or without a stored run, gets an empty time and a note saying why.
    """
    folder = Path(notebooks_dir)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder; pass the notebooks/ folder.")
    rows = []
    for nb in NOTEBOOKS:
        # matched by number: a notebook renamed since this list was written still counts
        found = sorted(folder.glob(f"{nb.number}_*.ipynb"))
        seconds = stored_wall_s(found[0]) if found else None
        if seconds is not None:
            note = "stored run"
        elif found:
            note = "no stored run yet"
        else:
            note = "not in this copy"
        rows.append(
            {
                "notebook": (found[0].name if found else nb.file).removesuffix(".ipynb"),
                "question it answers": nb.question,
                "GPU for the full-size models": nb.gpu,
                "tiny profile, s": None if seconds is None else round(seconds),
                "time from": note,
            }
        )
    return pd.DataFrame(rows).set_index("notebook")


def notebook(number: str) -> Notebook:
    """The notebook numbered `number` ('06'), for messages that tell what to run."""
    for nb in NOTEBOOKS:
        if nb.number == number:
            return nb
    raise InputError(
        f"No notebook numbered {number!r}; the course has {', '.join(n.number for n in NOTEBOOKS)}."
    )
