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
    """One notebook of the course: its file, the question it answers, the GPU it wants."""

    file: str
    question: str
    gpu: str  # what the full-size models need; every notebook runs on the tiny profile

    @property
    def number(self) -> str:
        """'06' for 06_guard_companion.ipynb: how the course and its messages name it."""
        return self.file[:2]


NOTEBOOKS: tuple[Notebook, ...] = (
    Notebook("00_why_on_prem.ipynb", "Why run models on your own hardware at all?", "none"),
    Notebook(
        "01_past_encoder_classifier_cpu.ipynb",
        "Does a small encoder, trained on a few examples, classify assessments?",
        "none",
    ),
    Notebook(
        "02_present_quantized_llama.ipynb",
        "How much memory does an LLM need in 16/8/4 bits, and how well does it classify?",
        "Colab T4 or L4 for Llama 3.1 8B",
    ),
    Notebook(
        "03_future_multi_gpu_tgi.ipynb",
        "How many GPUs does a model need, and how does a server cope with many users?",
        "several GPUs for 70B models (planned on paper here)",
    ),
    Notebook("04_cpu_only.ipynb", "How fast does a GGUF model answer on a CPU alone?", "none"),
    Notebook(
        "05_conversations.ipynb",
        "How does a chat keep its history inside the context window?",
        "none",
    ),
    Notebook(
        "06_guard_companion.ipynb",
        "How do you keep unsafe requests and replies out, and what does it cost?",
        "none (Llama Guard 8B: a T4 or a fast CPU)",
    ),
    Notebook(
        "07_cpu_vs_gpu.ipynb",
        "Where does the time go per token: CPU vs GPU, against the memory roofline?",
        "optional: Colab T4/L4 for the GPU columns",
    ),
    Notebook(
        "08_evaluation.ipynb",
        "Can a user trust one prediction, and what do labels and a judge cost?",
        "none",
    ),
    Notebook(
        "09_quantization_quality.ipynb",
        "What does each quantization type cost in quality, size and speed?",
        "none",
    ),
    Notebook(
        "10_packaging_a_service.ipynb",
        "How do you turn a model into a service others can call?",
        "none",
    ),
    Notebook(
        "11_drift_detection.ipynb",
        "How do you know the model is still right next month, without labels?",
        "none",
    ),
    Notebook(
        "99_wrap_up.ipynb",
        "Side by side: would an encoder do the job?",
        "none",
    ),
)


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
