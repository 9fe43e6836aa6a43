"""The one place that names the course's GitHub repository, and the command that rewrites
everything built from it: colab_links.md, each notebook's badge and Colab install line, and
the Colab runtime (GPU or not) stored in each notebook.

    python -m llmops_lib.core.links                      rewrite all from GITHUB_SLUG and REF
    python -m llmops_lib.core.links --repo OWNER/NAME [--ref TAG]   move the course, then rewrite
"""

from __future__ import annotations

import argparse
import json
import os
import re
from contextlib import ExitStack
from pathlib import Path

from . import course, results
from .errors import InputError

GITHUB_SLUG = "on-prem-llmops/llmops-course"
REF = "main"  # a branch or a tag: what Colab opens and installs
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
# Notebooks whose lesson needs a GPU (their badge opens a T4 runtime; setup() warns without).
GPU_NOTEBOOKS = ("02_present_quantized_llama.ipynb", "07_cpu_vs_gpu.ipynb")
# Extras of llmops_lib a notebook installs on Colab beyond [colab] (06 scans code).
NOTEBOOK_EXTRAS = {"06_guard_companion.ipynb": ("guard",)}
ROOT = Path(__file__).resolve().parents[2]


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


def notebook_text(path: Path, slug: str = GITHUB_SLUG, ref: str = REF) -> str:
    """The notebook at `path` with its badge (first cell), setup cell (second) and Colab
    metadata for `slug` at `ref`, as text; nothing is written."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    first, second = nb["cells"][0], nb["cells"][1]
    if first["cell_type"] != "markdown" or not BADGE.search("".join(first["source"])):
        raise InputError(f"{path.name}: the first cell must be markdown with the Colab badge.")
    if second["cell_type"] != "code" or "llmops_lib.setup(" not in "".join(second["source"]):
        raise InputError(f"{path.name}: the second cell must be the setup cell.")
    first["source"] = BADGE.sub(badge(path.name, slug, ref), "".join(first["source"])).splitlines(
        True
    )
    second["source"] = setup_cell(path.name, slug, ref).splitlines(True)
    nb["metadata"].pop("accelerator", None)
    nb["metadata"].update(colab_metadata(path.name))
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def rewrite_notebook(path: Path, slug: str = GITHUB_SLUG, ref: str = REF) -> None:
    """Badge (first cell), setup cell (second) and Colab metadata for `slug` at `ref`."""
    _write_all({path: notebook_text(path, slug, ref)})


def planned_rewrites(root: Path = ROOT, slug: str = GITHUB_SLUG, ref: str = REF) -> dict[Path, str]:
    """The new text of colab_links.md, README.md's notebook table (from core/course.py) and
    every notebook; every notebook is checked before anything is written."""
    check_slug(slug)
    check_ref(ref)
    paths = notebook_paths(root)
    texts = {path: notebook_text(path, slug, ref) for path in paths}
    texts[root / "colab_links.md"] = colab_links_markdown([p.name for p in paths], slug, ref)
    readme = root / "README.md"
    if readme.exists():
        texts[readme] = course.with_readme_table(readme.read_text(encoding="utf-8"))
    return texts


def rewrite_all(root: Path = ROOT, slug: str = GITHUB_SLUG, ref: str = REF) -> None:
    """colab_links.md and every notebook, pointing at `slug` at `ref`: all or none."""
    _write_all(planned_rewrites(root, slug, ref))


def _write_all(texts: dict[Path, str]) -> None:
    """Every file or none: all are written beside them first (results.replacing), then each
    renamed over its old version, its mode kept (a rename does not fail half-way)."""
    with ExitStack() as stack:
        for path, text in texts.items():
            part = stack.enter_context(results.replacing(path))
            part.write_text(text, encoding="utf-8")
            if path.exists():
                os.chmod(part, path.stat().st_mode & 0o777)


# GitHub's rules: an owner (user or organization) is 1-39 ASCII letters, digits and single
# hyphens, not at either end; a repository name is 1-100 ASCII letters, digits, '-', '_'
# and '.', neither '.' nor '..'.
OWNER = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}")
NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")


def check_slug(slug: object) -> str:
    """`slug` when it is OWNER/NAME as GitHub allows them, else InputError saying why."""
    example = "e.g. my-org/llmops-course"
    if not isinstance(slug, str) or slug.count("/") != 1:
        raise InputError(f"--repo {slug!r} is not OWNER/NAME, {example}.")
    owner, name = slug.split("/")
    if not OWNER.fullmatch(owner):
        raise InputError(
            f"--repo {slug!r}: the owner {owner!r} is not a GitHub user or organization name "
            f"(1-39 ASCII letters, digits and single hyphens, none at either end), {example}."
        )
    if not NAME.fullmatch(name) or name in (".", "..") or name.lower().endswith(".git"):
        raise InputError(
            f"--repo {slug!r}: the name {name!r} is not a GitHub repository name (1-100 ASCII "
            f"letters, digits, '-', '_' and '.', not '.', '..' or ending in '.git'), {example}."
        )
    return slug


def check_ref(ref: object) -> str:
    """`ref` when it is a branch or tag name git accepts (git check-ref-format) that also
    reads safely in a pip URL, else InputError saying why."""
    if not isinstance(ref, str) or not ref:
        raise InputError(f"--ref {ref!r}: name a branch or a tag, e.g. main or v1.0.")
    problems = [
        (not re.fullmatch(r"[A-Za-z0-9._/-]{1,255}", ref), "use ASCII letters, digits, . _ / -"),
        (ref.startswith("-"), "it must not start with '-' (git would read an option)"),
        (".." in ref or "//" in ref, "no '..' or '//'"),
        (ref.startswith("/") or ref.endswith(("/", ".")), "no '/' at either end, no final '.'"),
        (any(p.startswith(".") or p.endswith(".lock") for p in ref.split("/")), "no part may "
         "start with '.' or end with '.lock'"),
    ]  # fmt: skip
    reasons = [why for bad, why in problems if bad]
    if reasons:
        raise InputError(f"--ref {ref!r} is not a branch or tag name: {'; '.join(reasons)}.")
    return ref


def moved_module(slug: str, ref: str, module: Path = Path(__file__)) -> str:
    """This file's text with GITHUB_SLUG and REF pointing at another repository and ref."""
    check_slug(slug)
    check_ref(ref)
    text = module.read_text(encoding="utf-8")
    text = re.sub(r'^GITHUB_SLUG = ".*"$', f'GITHUB_SLUG = "{slug}"', text, flags=re.M)
    return re.sub(r'^REF = "[^"]*"', f'REF = "{ref}"', text, flags=re.M)


def move_course(slug: str, ref: str, module: Path = Path(__file__)) -> None:
    """Point GITHUB_SLUG and REF in this file at another repository (a fork, a tag)."""
    _write_all({module: moved_module(slug, ref, module)})


def check_checkout(root: Path = ROOT) -> Path:
    """`root` when it is a checkout of the course (the command rewrites files of the
    repository), not an installed package: site-packages has no notebooks to point."""
    if not (root / "pyproject.toml").is_file() or not notebook_paths(root):
        raise InputError(
            f"{root} is not a checkout of the course (no pyproject.toml and notebooks/): this "
            "llmops_lib is an installed package. Run `python -m llmops_lib.core.links` inside a "
            "clone of the repository (git clone, then pip install -e .)."
        )
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llmops_lib.core.links", description=__doc__)
    parser.add_argument("--repo", help="OWNER/NAME of the course's GitHub repository")
    parser.add_argument("--ref", default=None, help="branch or tag to open and install")
    args = parser.parse_args(argv)
    slug = GITHUB_SLUG if args.repo is None else args.repo
    ref = REF if args.ref is None else args.ref
    try:
        root = check_checkout(ROOT)
        texts = planned_rewrites(root, slug, ref)
        if args.repo is not None or args.ref is not None:
            texts[Path(__file__)] = moved_module(slug, ref)  # for later runs
    except InputError as err:
        parser.error(str(err))
    _write_all(texts)
    print(f"colab_links.md and {len(notebook_paths(root))} notebooks now point at {slug}@{ref}")


if __name__ == "__main__":
    main()
