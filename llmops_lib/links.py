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
