"""The replica's verdict and report: per notebook, seconds to the end of the setup cell, to the
first model answer and in all, pass or fail, and what differs from Colab. A notebook fails on
any cell error and on a setup cell over its budget; the other budgets are printed, not failed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat
import pandas as pd

from llmops_lib.core import results

from .runtime import Run

SETUP_BUDGET_S = 120  # a setup cell longer than this fails the notebook
FIRST_ANSWER_BUDGET_S = 180  # from the badge click (the kernel's start): printed
SECOND_RUN_BUDGET_S = 30  # the same notebook again in the same runtime: printed
TOTAL_BUDGET_S = 30 * 60  # the whole replica run: printed


def package_changes(
    before: dict[str, str], after: dict[str, str], colab: dict[str, str]
) -> dict[str, list[str]]:
    """What a runtime's installs did to the image, by kind: packages Colab lacks that were
    added; Colab's own packages whose version changed (Colab would change them too); packages
    Colab has but the image lacked (a gap of the replica, not of Colab)."""
    changes: dict[str, list[str]] = {"added": [], "changed Colab's": [], "image lacked": []}
    for name, version in sorted(after.items()):
        if name not in before:
            if name in colab:
                changes["image lacked"].append(f"{name} {version} (Colab: {colab[name]})")
            else:
                changes["added"].append(f"{name} {version}")
        elif version != before[name]:
            changes["changed Colab's" if name in colab else "added"].append(
                f"{name} {before[name]} -> {version}"
            )
    return changes


@dataclass
class Notebook:
    """A notebook's runtime: its run, a second run in the same runtime, and what was found."""

    run: Run
    second: Run | None = None
    leftovers: list[str] = field(default_factory=list)
    asset_requests: list[str] = field(default_factory=list)
    packages: dict[str, list[str]] = field(default_factory=dict)
    image_changed: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)  # written outside the runtime's folders

    def failures(self) -> list[str]:
        """Why the notebook fails on Colab's badge path; empty when it passes."""
        run, why = self.run, []
        if run.error:
            why.append(run.error)
        if run.setup_cell_s is not None and run.setup_cell_s > SETUP_BUDGET_S:
            why.append(f"setup cell took {run.setup_cell_s:.0f} s (budget {SETUP_BUDGET_S} s)")
        if self.leftovers:
            why.append(f"left running after its kernel stopped: {', '.join(self.leftovers)}")
        if self.image_changed:
            why.append(f"changed {len(self.image_changed)} image files in place")
        if self.outside:
            why.append(f"wrote outside its runtime: {', '.join(self.outside)}")
        return why


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def table(notebooks: list[Notebook]) -> pd.DataFrame:
    """One row per notebook: result, the three times, the first-answer cell, what failed."""
    rows = []
    for nb in notebooks:
        run, why = nb.run, nb.failures()
        rows.append(
            {
                "notebook": run.notebook,
                "result": "FAIL" if why else "pass",
                "setup end, s": seconds(run.setup_s),
                "first answer, s": seconds(run.first_answer_s),
                "answer cell": "-" if run.first_answer_cell is None else run.first_answer_cell,
                "total, s": seconds(run.total_s),
                "cells": f"{run.cells_run}/{run.code_cells}",
                "asset GETs": len(nb.asset_requests),
                "why": "; ".join(why)[:120],
            }
        )
    return pd.DataFrame(rows)


def budget_lines(notebooks: list[Notebook], total_s: float) -> list[str]:
    """The printed budgets: first answer, second run and whole run (the setup budget fails)."""
    lines = []
    for nb in notebooks:
        run = nb.run
        if run.first_answer_cell is not None:
            ok = run.first_answer_s is not None and run.first_answer_s <= FIRST_ANSWER_BUDGET_S
            lines.append(
                f"{'ok  ' if ok else 'OVER'} {run.notebook}: first answer (cell "
                f"{run.first_answer_cell}) {seconds(run.first_answer_s)} s after the kernel's "
                f"start (budget {FIRST_ANSWER_BUDGET_S} s)"
            )
        if nb.second is not None:
            s = nb.second.first_answer_s
            ok = s is not None and s <= SECOND_RUN_BUDGET_S
            lines.append(
                f"{'ok  ' if ok else 'OVER'} {run.notebook}: second run in the same runtime, "
                f"first answer {seconds(s)} s (budget {SECOND_RUN_BUDGET_S} s)"
                + (f"; {nb.second.error}" if nb.second.error else "")
            )
    ok = total_s <= TOTAL_BUDGET_S
    lines.append(
        f"{'ok  ' if ok else 'OVER'} whole replica run: {total_s / 60:.1f} min "
        f"(budget {TOTAL_BUDGET_S // 60} min)"
    )
    return lines


def details(notebooks: list[Notebook]) -> list[str]:
    """Per notebook: the setup cell's last lines when it failed or ran long, the package
    changes, the asset downloads."""
    lines = []
    for nb in notebooks:
        run = nb.run
        lines.append(f"{run.notebook}:")
        slow = run.setup_cell_s is None or run.setup_cell_s > SETUP_BUDGET_S
        if run.setup_output and (slow or run.error_cell == run.setup_cell):
            lines += [f"    setup | {line}" for line in run.setup_output]
        for kind, items in nb.packages.items():
            if items:
                lines.append(f"    setup {kind} ({len(items)}): {', '.join(items)}")
        lines.append(f"    release asset requests: {', '.join(nb.asset_requests) or 'none'}")
    return lines


def to_json(notebooks: list[Notebook], facts: dict) -> dict:
    def plain(run: Run | None) -> dict | None:
        return None if run is None else {k: v for k, v in asdict(run).items() if k != "executed"}

    return {
        **facts,
        "notebooks": [
            {
                **{k: v for k, v in asdict(nb).items() if k not in ("run", "second")},
                "run": plain(nb.run),
                "second": plain(nb.second),
                "failures": nb.failures(),
            }
            for nb in notebooks
        ],
    }


def save(folder: Path, notebooks: list[Notebook], facts: dict) -> Path:
    """report.json, report.csv and each executed notebook, in a new timestamped folder under
    `folder`, written whole or not at all (llmops_lib.core.results)."""

    def write(tmp: Path) -> None:
        (tmp / "report.json").write_text(json.dumps(to_json(notebooks, facts), indent=1))
        table(notebooks).to_csv(tmp / "report.csv", index=False)
        for nb in notebooks:
            for run, suffix in ((nb.run, ""), (nb.second, "-second-run")):
                if run is not None and run.executed is not None:
                    nbformat.write(run.executed, tmp / f"{Path(run.notebook).stem}{suffix}.ipynb")

    return results.save_dir("colab-replica", write, folder)
