"""Every measured figure the prose states is printed by the notebook's own stored run, or its
sentence links to its source.

Why: the numbers move each time `make notebooks` re-executes on a noisy machine, and prose
typed once goes stale (a course map or a wrap-up quoting a run that a later run replaced).
So a figure in a markdown cell must appear, as printed, among that notebook's stored outputs,
or the sentence that states it carries a link to where it was published. Conclusions that
depend on a measurement are printed by a cell; the prose says what to look for.

What counts as a measured figure: a number with a decimal point, a percentage, a ratio
(`1.62x`, `3×`), or a number with a unit of time, speed or size. Not figures: versions and
names (`Llama 3.1`, `0.3.36`, `Qwen2.5`), and the short list of fixed facts below.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

UNITS = {
    "time": r"ms|s|sec|seconds?|min|minutes?|h|hours?",
    "speed": r"tokens?/s|tok/s|t/s|GB/s|MB/s|GiB/s",
    "size": r"[KMGT]i?B|kB|bytes",
    "share": r"%|x|×",
}
FIGURE = re.compile(
    r"(?<![\w.\-/=~+^:])"  # not part of a word, a version, a path, an option or an image tag
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
    r"(?![\d.]*\d)"  # the whole number: `0.3.36` is a version, not 0.3
    rf"(?:[ \u00a0]?(?P<unit>(?:{'|'.join(UNITS.values())})(?![\w/])))?"
)
# A decimal number right after one of these names is a version or a model name, not a figure.
NAMES = re.compile(
    r"(?:Llama|Guard|Python|CUDA|CC|capability|Qwen|Phi|Gemma|SmolLM2?|Mixtral|torch|"
    r"transformers|vLLM|TGI|Ubuntu|Debian|pandas|numpy|version|v|sm|compute|PEP|ISO|GPT|"
    r"gpt|Claude|BERT|SetFit|setfit|Section|section|§)[ -]?(?:[≥≤<>]=? ?)?$"
)
# Facts that do not change with a run (hardware data sheets, definitions), stated in prose
# without a link because every reader can check them. Keep this list short: a measured or
# computed figure never belongs here.
FIXED_FACTS = {
    "16 GB",  # a T4's memory (NVIDIA data sheet), also 16 GB RAM in laptop examples
    "15 GB",  # what a Colab T4 leaves usable (Colab reports 15 GB)
    "24 GB",  # an L4's memory
    "12.7 GB",  # a Colab runtime's RAM (Colab's resource panel)
    "80 GB",  # an A100 / H100 80 GB's memory
    "40 GB",  # an A100 40 GB's memory
    "100 %",  # a whole, not a measurement
    "100%",
}
LINK = re.compile(r"\]\((?:https?://|\.\./|[\w./-]+\.(?:md|ipynb|csv|json))|<https?://|https?://")
SENTENCE_END = re.compile(
    r"(?<=[.!?])\s+(?=[A-Z*_`(\[\"'])|\n\s*\n|\n(?=\s*(?:[-*+]|\d+\.)\s)|\n(?=\s*\|)"
)  # sentences, paragraphs, list items and table rows
CODE_BLOCK = re.compile(r"```.*?```", re.S)
INLINE_CODE = re.compile(r"`[^`\n]+`")  # code, option values and literals: not measurements


def figures(text: str) -> Iterator[tuple[str, str]]:
    """(figure as written, its sentence) for every measured figure in a markdown text."""
    for sentence in SENTENCE_END.split(INLINE_CODE.sub(" ", CODE_BLOCK.sub(" ", text))):
        for match in FIGURE.finditer(sentence):
            num, unit = match["num"], match["unit"]
            if unit is None and "." not in num:
                continue  # a plain whole number: a count, a section, a year
            if unit is None and NAMES.search(sentence[: match.start()]):
                continue  # Llama 3.1, Python 3.13, compute capability 7.5
            written = match.group(0).strip()
            if written in FIXED_FACTS or written.replace(" ", "") in FIXED_FACTS:
                continue
            yield written, sentence.strip()


def output_text(nb: dict) -> str:
    """Everything the stored run printed, as a reader sees it."""
    parts = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            if out["output_type"] == "stream":
                parts.append("".join(out["text"]))
            for mime in ("text/plain", "text/html", "text/markdown"):
                if mime in out.get("data", {}):
                    parts.append("".join(out["data"][mime]))
    return "\n".join(parts)


def printed(written: str, outputs: str) -> bool:
    """`written`'s number appears in the outputs as a number: exactly, or for a whole number
    also as the whole part of a printed decimal (`36 s` in prose for a printed `36.2`)."""
    num = FIGURE.match(written)["num"]
    forms = {num, num.replace(",", "")}
    for form in forms:
        tail = r"(?:\.\d+)?" if "." not in form else ""
        if re.search(rf"(?<![\d.]){re.escape(form)}{tail}(?![\d])", outputs):
            return True
    return False


def unsupported(path: Path) -> list[str]:
    """The figures of `path`'s prose that its outputs do not print and no link supports."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    outputs = output_text(nb)
    found = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        for written, sentence in figures("".join(cell["source"])):
            if not LINK.search(sentence) and not printed(written, outputs):
                found.append(f"cell {i}: {written!r} in: {sentence[:160]}")
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem[:2])
def test_every_figure_in_the_prose_is_printed_or_cited(path):
    found = unsupported(path)
    assert not found, (
        f"{path.name}: {len(found)} figures in the prose are neither printed by the stored run "
        "nor linked to a source (print them from a cell, say what to look for, or cite):\n"
        + "\n".join(found)
    )


@pytest.mark.parametrize(
    ("prose", "outputs", "flagged"),
    [
        ("The server leads by 14 %.", "lead 14.2", []),
        ("The server leads by 14 %.", "lead 15", ["14 %"]),
        ("Decode runs at 103.21 tokens/s.", "103.21", []),
        ("Decode runs at 103.2 tokens/s.", "103.21", ["103.2 tokens/s"]),
        ("It took 0.41x the time.", "0.41", []),
        ("It took 1.62x the time.", "", ["1.62x"]),
        ("Llama 3.1 8B on llama-cpp-python 0.3.36, Python 3.13.", "", []),
        ("A T4 has 16 GB; 1,255 tokens were sent.", "1255", []),
        ("An L4 reads 300 GB/s ([data sheet](https://www.nvidia.com/l4)).", "", []),
        ("In 2024 there were 3 runs of notebook 07.", "", []),
        ("Set `top_p=0.5`; the figure 0.5 is not printed.", "", ["0.5"]),
        ('Is `{"label": "no", "confidence": 0.9}` accepted?', "", []),
        ("| base | `python:3.12-slim` |\n| size | 672 MB |", "", ["672 MB"]),
    ],
)
def test_the_figure_reader_on_hand_made_cells(prose, outputs, flagged):
    got = [w for w, _ in figures(prose) if not printed(w, outputs) and not LINK.search(prose)]
    assert got == flagged
