"""Notebooks must open cleanly on Colab and re-run under nbval: check their structure."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llmops_lib.core import links

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_starts_with_badge_then_setup(path):
    cells = load(path)["cells"]
    first, second = cells[0], cells[1]
    assert first["cell_type"] == "markdown"
    assert links.badge(path.name) in "".join(first["source"])
    assert second["cell_type"] == "code"
    assert "".join(second["source"]) == links.setup_cell(path.name), (
        "the setup cell differs from links.setup_cell(): run `python -m llmops_lib.core.links`"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_opens_on_the_colab_runtime_its_lesson_needs(path):
    metadata = load(path)["metadata"]
    for key, value in links.colab_metadata(path.name).items():
        assert metadata.get(key) == value, f"run `python -m llmops_lib.core.links` ({key})"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_metadata_is_clean(path):
    nb = load(path)
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert "widgets" not in nb["metadata"], "widget state must not be committed"
    for cell in nb["cells"]:
        assert "widgets" not in cell.get("metadata", {})


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_executed_in_order_with_outputs(path):
    counts = []
    for cell in load(path)["cells"]:
        if cell["cell_type"] != "code":
            continue
        if cell["outputs"]:
            assert cell["execution_count"] is not None, "output with a null execution count"
        if cell["execution_count"] is not None:
            counts.append(cell["execution_count"])
    assert counts, "notebook is committed without outputs"
    assert counts == sorted(counts), "cells were not run top to bottom"


def test_colab_links_lists_every_notebook_with_the_configured_badge():
    text = (ROOT / "colab_links.md").read_text(encoding="utf-8")
    listed = re.findall(r"/notebooks/([\w.-]+\.ipynb)\)", text)
    assert listed == [p.name for p in NOTEBOOKS]
    assert text == links.colab_links_markdown(listed), "run `python -m llmops_lib.core.links`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_ends_with_takeaways_and_exercises_with_hidden_solutions(path):
    cells = load(path)["cells"]
    markdown = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    assert "## What to take away" in markdown and "## Exercises" in markdown
    solutions = [c for c in cells if "solution" in c.get("metadata", {}).get("tags", [])]
    code = [c for c in solutions if c["cell_type"] == "code"]
    assert len(code) >= 2, "2-4 exercises, each with a solution cell"
    for n, cell in enumerate(code, start=1):
        assert "".join(cell["source"]).startswith(f"# Solution to exercise {n}\n")
        assert cell["metadata"].get("jupyter", {}).get("source_hidden"), "collapse solutions"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_output_checks_are_cell_tags_not_comments_a_learner_reads(path):
    for cell in load(path)["cells"]:
        assert "NBVAL_CHECK_OUTPUT" not in "".join(cell["source"]), "use the nbval-check-output tag"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_under_the_hood_cells_stay_short(path):
    """Each engine's own API is shown in short cells (at most 12 lines of code each), so a
    learner can read and retype them."""
    cells = load(path)["cells"]
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "markdown" or "Under the hood" not in "".join(cell["source"]):
            continue
        for follower in cells[i + 1 :]:
            if follower["cell_type"] != "code":
                break
            lines = "".join(follower["source"]).splitlines()
            code = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
            assert len(code) <= 12, f"{path.name}: a raw-engine cell of {len(code)} code lines"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_results_are_saved_through_a_declared_kind(path):
    """A notebook saves a result through its lesson's `results.Kind` (kind.save_frame(df),
    loadtest.save(df, loadtest.KIND)), never under a name typed in the cell: the wrap-up
    reads the same declared kinds, so writer and reader cannot spell the name two ways."""
    typed = re.compile(r"results\.save(_frame|_dir)?\(|loadtest\.save\([^)]*stem=")
    for cell in load(path)["cells"]:
        if cell["cell_type"] == "code":
            source = "".join(cell["source"])
            assert not typed.search(source), f"{path.name}: a result named in the cell: {source}"
