"""The course's address lives in one place; one command rewrites everything built from it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llmops_lib import links

ROOT = Path(__file__).resolve().parents[1]


def test_the_setup_cell_is_three_lines_and_installs_only_on_colab():
    cell = links.setup_cell("06_guard_companion.ipynb")
    assert len(cell.splitlines()) == 3
    assert cell.startswith('if "google.colab" in str(get_ipython()):')
    assert f'"llmops_lib[colab,guard] @ {links.pip_install_url()}"' in cell
    assert "wants_gpu=True" in links.setup_cell(links.GPU_NOTEBOOKS[0])
    assert "wants_gpu" not in links.setup_cell("04_cpu_only.ipynb")


def test_moving_the_course_rewrites_module_badges_cells_and_links(tmp_path):
    module = tmp_path / "links.py"
    shutil.copy(links.__file__, module)
    links.move_course("my-org/my-course", "v1.0", module=module)
    text = module.read_text()
    assert 'GITHUB_SLUG = "my-org/my-course"' in text and 'REF = "v1.0"' in text

    (tmp_path / "notebooks").mkdir()
    name = "07_cpu_vs_gpu.ipynb"
    shutil.copy(ROOT / "notebooks" / name, tmp_path / "notebooks" / name)
    links.rewrite_all(tmp_path, "my-org/my-course", "v1.0")
    nb = json.loads((tmp_path / "notebooks" / name).read_text())
    assert "github/my-org/my-course/blob/v1.0/notebooks/07" in "".join(nb["cells"][0]["source"])
    setup = "".join(nb["cells"][1]["source"])
    assert "git+https://github.com/my-org/my-course@v1.0" in setup
    assert nb["metadata"]["accelerator"] == "GPU"
    assert "my-org/my-course/blob/v1.0" in (tmp_path / "colab_links.md").read_text()


@pytest.mark.parametrize(("slug", "ref"), [("no-slash", "main"), ("a/b", "bad ref; rm")])
def test_a_bad_repository_or_ref_is_refused_before_writing(tmp_path, slug, ref):
    module = tmp_path / "links.py"
    shutil.copy(links.__file__, module)
    before = module.read_text()
    with pytest.raises(ValueError, match="--repo|--ref"):
        links.move_course(slug, ref, module=module)
    assert module.read_text() == before


def test_a_notebook_without_badge_or_setup_cell_is_named(tmp_path):
    path = tmp_path / "01_x.ipynb"
    cells = [{"cell_type": "markdown", "metadata": {}, "source": ["# no badge"]}] * 2
    path.write_text(json.dumps({"cells": cells, "metadata": {}}))
    with pytest.raises(ValueError, match="01_x.ipynb: the first cell"):
        links.rewrite_notebook(path)
