"""The one place that names the course's GitHub repository, and the command that rewrites
everything built from it: colab_links.md, each notebook's badge and Colab install line, and
the Colab runtime (GPU or not) stored in each notebook.

    python -m llmops_lib.links                      rewrite all from GITHUB_SLUG and REF
    python -m llmops_lib.links --repo OWNER/NAME [--ref TAG]   move the course, then rewrite
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

GITHUB_SLUG = "on-prem-llmops/llmops-course"
REF = "main"  # a branch or a tag: what Colab opens and installs
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
# Notebooks whose lesson needs a GPU (their badge opens a T4 runtime; setup() warns without).
GPU_NOTEBOOKS = ("02_present_quantized_llama.ipynb", "07_cpu_vs_gpu.ipynb")
# Extras of llmops_lib a notebook installs on Colab beyond [colab] (06 scans code).
NOTEBOOK_EXTRAS = {"06_guard_companion.ipynb": ("guard",)}
ROOT = Path(__file__).resolve().parents[1]


def colab_url(notebook: str, slug: str = GITHUB_SLUG, ref: str = REF) -> str:
    """Open-in-Colab address of a notebook file in notebooks/."""
    return f"https://colab.research.google.com/github/{slug}/blob/{ref}/notebooks/{notebook}"


def badge(notebook: str, slug: str = GITHUB_SLUG, ref: str = REF) -> str:
    """Markdown for the Open-in-Colab badge of `notebook`."""
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(notebook, slug, ref)})"


def pip_install_url(
    slug: str = GITHUB_SLUG, ref: str = REF, host: str = "https://github.com"
) -> str:
    """What Colab installs: the library straight from the repository (`host`: another git
    server, e.g. file:///path holding a local clone at slug/, for scripts/colab_replica.py)."""
    return f"git+{host}/{slug}@{ref}"


def setup_cell(notebook: str, slug: str = GITHUB_SLUG, ref: str = REF) -> str:
    """The notebook's first code cell: install on Colab only (locally `make lab` did), then
    setup(). Three lines, so a learner reads it at a glance."""
    extras = ",".join(("colab", *NOTEBOOK_EXTRAS.get(notebook, ())))
    wants_gpu = "wants_gpu=True" if notebook in GPU_NOTEBOOKS else ""
    return (
        'if "google.colab" in str(get_ipython()):  # locally, `make lab` installed it\n'
        f'    %pip install -q "llmops_lib[{extras}] @ {pip_install_url(slug, ref)}"\n'
        f"import llmops_lib; session = llmops_lib.setup({wants_gpu})"
    )


def colab_metadata(notebook: str) -> dict:
    """Colab's runtime settings stored in the notebook: a T4 GPU where the lesson needs one."""
    if notebook in GPU_NOTEBOOKS:
        return {"accelerator": "GPU", "colab": {"gpuType": "T4", "provenance": []}}
    return {"colab": {"provenance": []}}


def colab_links_markdown(notebooks: list[str], slug: str = GITHUB_SLUG, ref: str = REF) -> str:
    """The text of colab_links.md: one badge per notebook, in course order."""
    gpu = ", ".join(n[:2] for n in GPU_NOTEBOOKS)
    lines = [
        "# Open the notebooks in Google Colab",
        "",
        f"Each badge opens the notebook from `{ref}` of "
        f"[{slug}](https://github.com/{slug}). Notebooks {gpu} open on a T4 GPU "
        "runtime (Runtime → Change runtime type to change it); add your Hugging Face token as "
        "the Colab secret `HF_TOKEN` for the gated Llama models.",
        "",
        "| notebook | open |",
        "|---|---|",
    ]
    lines += [f"| `{name}` | {badge(name, slug, ref)} |" for name in notebooks]
    return "\n".join(lines) + "\n"


def notebook_paths(root: Path = ROOT) -> list[Path]:
    return sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")


def rewrite_notebook(path: Path, slug: str = GITHUB_SLUG, ref: str = REF) -> None:
    """Badge (first cell), setup cell (second) and Colab metadata for `slug` at `ref`."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    first, second = nb["cells"][0], nb["cells"][1]
    if first["cell_type"] != "markdown" or not BADGE.search("".join(first["source"])):
        raise ValueError(f"{path.name}: the first cell must be markdown with the Colab badge.")
    if second["cell_type"] != "code" or "llmops_lib.setup(" not in "".join(second["source"]):
        raise ValueError(f"{path.name}: the second cell must be the setup cell.")
    first["source"] = BADGE.sub(badge(path.name, slug, ref), "".join(first["source"])).splitlines(
        True
    )
    second["source"] = setup_cell(path.name, slug, ref).splitlines(True)
    nb["metadata"].pop("accelerator", None)
    nb["metadata"].update(colab_metadata(path.name))
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def rewrite_all(root: Path = ROOT, slug: str = GITHUB_SLUG, ref: str = REF) -> None:
    """colab_links.md and every notebook, pointing at `slug` at `ref`."""
    paths = notebook_paths(root)
    for path in paths:
        rewrite_notebook(path, slug, ref)
    text = colab_links_markdown([p.name for p in paths], slug, ref)
    (root / "colab_links.md").write_text(text, encoding="utf-8")


def move_course(slug: str, ref: str, module: Path = Path(__file__)) -> None:
    """Point GITHUB_SLUG and REF in this file at another repository (a fork, a tag)."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", slug):
        raise ValueError(f"--repo {slug!r} is not OWNER/NAME, e.g. my-org/llmops-course.")
    if not re.fullmatch(r"[\w./-]+", ref):
        raise ValueError(f"--ref {ref!r} is not a branch or tag name.")
    text = module.read_text(encoding="utf-8")
    text = re.sub(r'^GITHUB_SLUG = ".*"$', f'GITHUB_SLUG = "{slug}"', text, flags=re.M)
    text = re.sub(r'^REF = "[^"]*"', f'REF = "{ref}"', text, flags=re.M)
    module.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llmops_lib.links", description=__doc__)
    parser.add_argument("--repo", help="OWNER/NAME of the course's GitHub repository")
    parser.add_argument("--ref", default=None, help="branch or tag to open and install")
    args = parser.parse_args(argv)
    slug, ref = args.repo or GITHUB_SLUG, args.ref or REF
    if args.repo or args.ref:
        move_course(slug, ref)  # for later runs; this one passes them on below
    rewrite_all(slug=slug, ref=ref)
    print(f"colab_links.md and {len(notebook_paths())} notebooks now point at {slug}@{ref}")


if __name__ == "__main__":
    main()
