"""The one place that names the course's GitHub repository; badges are built from it."""

from __future__ import annotations

GITHUB_SLUG = "on-prem-llmops/llmops-course"
BRANCH = "main"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"


def colab_url(notebook: str) -> str:
    """Open-in-Colab address of a notebook file in notebooks/."""
    return (
        f"https://colab.research.google.com/github/{GITHUB_SLUG}/blob/{BRANCH}/notebooks/{notebook}"
    )


def badge(notebook: str) -> str:
    """Markdown for the Open-in-Colab badge of `notebook`."""
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(notebook)})"


def pip_install_url() -> str:
    """What Colab installs: the library straight from the repository."""
    return f"git+https://github.com/{GITHUB_SLUG}@{BRANCH}"


def colab_links_markdown(notebooks: list[str]) -> str:
    """The text of colab_links.md: one badge per notebook, in course order."""
    lines = [
        "# Open the notebooks in Google Colab",
        "",
        f"Each badge opens the notebook from the `{BRANCH}` branch of "
        f"[{GITHUB_SLUG}](https://github.com/{GITHUB_SLUG}). Pick a GPU runtime "
        "(Runtime → Change runtime type → T4 or L4) for notebooks 02 and 07; add your Hugging "
        "Face token as the Colab secret `HF_TOKEN` for the gated Llama models.",
        "",
        "| notebook | open |",
        "|---|---|",
    ]
    lines += [f"| `{name}` | {badge(name)} |" for name in notebooks]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m llmops_lib.links > colab_links.md
    from pathlib import Path

    names = sorted(p.name for p in Path("notebooks").glob("[0-9][0-9]_*.ipynb"))
    print(colab_links_markdown(names), end="")
