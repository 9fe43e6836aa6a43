"""The course's address lives in one place; one command rewrites everything built from it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llmops_lib.core import course, links
from llmops_lib.core.errors import InputError

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


BAD_REPOS = {
    "parent folders": "../..",
    "hidden owner and .git": ".hidden/.git",
    "Cyrillic look-alike": "my-\u043erg/course",  # a Cyrillic o
    "5000-character owner": "a" * 5000 + "/course",
    "40-character owner": "a" * 40 + "/course",
    "owner ending in a hyphen": "my-org-/course",
    "double hyphen": "my--org/course",
    "empty": "",
    "three parts": "a/b/c",
    "name ..": "my-org/..",
    "name with a space": "my-org/my course",
    "101-character name": "my-org/" + "n" * 101,
}
BAD_REFS = {
    "an option": "--upload-pack=touch /tmp/x",
    "leading hyphen": "-main",
    "empty": "",
    "parent": "release/../main",
    "space": "my branch",
    "lock": "main.lock",
    "hidden part": "feature/.x",
    "trailing slash": "feature/",
    "control character": "main\x00",
    "non-ASCII": "r\u00e9lease",
}


@pytest.mark.parametrize("case", BAD_REPOS, ids=list(BAD_REPOS))
def test_a_repository_github_would_not_accept_is_refused(case):
    with pytest.raises(links.InputError, match="--repo"):
        links.check_slug(BAD_REPOS[case])


@pytest.mark.parametrize("case", BAD_REFS, ids=list(BAD_REFS))
def test_a_ref_git_would_not_accept_is_refused(case):
    with pytest.raises(links.InputError, match="--ref"):
        links.check_ref(BAD_REFS[case])


@pytest.mark.parametrize("slug", ["my-org/llmops-course", "a/b", "A1-b2/.github", "x/a_b.c"])
def test_names_github_accepts_pass(slug):
    assert links.check_slug(slug) == slug
    assert links.check_ref("release/v1.0-rc_2") == "release/v1.0-rc_2"


def _checkout(root: Path, names: list[str]) -> Path:
    """A copy of the course's notebooks (and its pyproject.toml) under `root`."""
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    for name in names:
        shutil.copy(ROOT / "notebooks" / name, root / "notebooks" / name)
    return root


def _texts(root: Path, pattern: str = "*") -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob(pattern) if p.is_file()}


def test_one_bad_notebook_leaves_every_file_as_it_was(tmp_path):
    root = _checkout(tmp_path, ["04_cpu_only.ipynb", "05_conversations.ipynb"])
    broken = root / "notebooks" / "06_broken.ipynb"  # sorts after the two good ones
    cells = [{"cell_type": "markdown", "metadata": {}, "source": ["# no badge"]}] * 2
    broken.write_text(json.dumps({"cells": cells, "metadata": {}}))
    before = _texts(root)
    with pytest.raises(links.InputError, match="06_broken.ipynb: the first cell"):
        links.rewrite_all(root, "my-org/my-course", "v1.0")
    assert _texts(root) == before  # not half-way: the first two are untouched too
    assert not list(root.rglob("*.tmp"))


@pytest.mark.parametrize("argv", [["--repo", ""], ["--repo", "../.."], ["--ref=--upload-pack"]])
def test_the_command_refuses_bad_names_and_writes_nothing(argv, capsys):
    before = _texts(ROOT / "notebooks", "*.ipynb") | {"links.py": Path(links.__file__).read_bytes()}
    with pytest.raises(SystemExit) as refused:
        links.main(argv)
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert "--repo" in err or "--ref" in err
    after = _texts(ROOT / "notebooks", "*.ipynb") | {"links.py": Path(links.__file__).read_bytes()}
    assert after == before


def test_an_installed_package_is_not_rewritten(tmp_path, monkeypatch, capsys):
    site = tmp_path / "site-packages"
    package = site / "llmops_lib"
    package.mkdir(parents=True)
    module = package / "links.py"
    shutil.copy(links.__file__, module)
    installed = module.read_text()
    monkeypatch.setattr(links, "ROOT", site)
    monkeypatch.setattr(links, "__file__", str(module))
    with pytest.raises(SystemExit) as refused:
        links.main(["--repo", "my-org/my-course"])
    assert refused.value.code == 2
    assert "not a checkout" in capsys.readouterr().err
    assert sorted(p.name for p in site.rglob("*")) == ["links.py", "llmops_lib"]  # nothing new
    assert module.read_text() == installed


def test_the_committed_badges_links_and_readme_table_are_what_the_command_writes():
    for path, text in links.planned_rewrites(ROOT).items():
        stored = path.read_text(encoding="utf-8")
        fix = f"{path.name} is stale: run python -m llmops_lib.core.links"
        if path.suffix == ".ipynb":  # the same notebook, whatever order its keys are in
            assert json.loads(text) == json.loads(stored), fix
        else:
            assert text == stored, fix


def test_every_notebook_is_in_the_course_and_the_course_names_no_other():
    assert [nb.file for nb in course.NOTEBOOKS] == [p.name for p in links.notebook_paths()]


def test_a_readme_without_the_table_marks_is_refused():
    with pytest.raises(InputError, match="lacks the marks of its notebook table"):
        course.with_readme_table("# A README\n\n| notebook | lesson |\n")
