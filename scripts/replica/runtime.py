"""One Colab runtime per notebook, as every Open-in-Colab badge opens one: a fresh copy of the
image, a fresh HOME and content folder (Colab's /content), Colab's kernel and shell classes,
and the notebook's cells run one after the other in a fresh kernel, as "Run all" does.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import psutil
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError
from traitlets import default

from llmops_lib.core import course, links

# What a runtime inherits from this machine: how to reach the package registries, no more.
NETWORK = (
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "PIP_CERT",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
)
# The system's own folders only: /usr/local holds this machine's tools (nvcc, ...), not Colab's.
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
COLAB_RELEASE_TAG = "release-colab-replica"  # Colab: release-colab_<date>-<time>_RC<n>
KERNEL_NAME = "colab-replica"
# Colab's kernel class; its shell is google.colab._shell.Shell.
KERNEL_CLASS = "google.colab._kernel.Kernel"
# The first cell after setup whose answer comes from a model, a server or an endpoint: a
# fragment of that cell's source, per notebook, declared beside the notebook in core/course.py
# (tests/test_colab_replica.py checks each still matches). 00 loads no model (its answer is
# the model file and its checksum); 99 uses none.
FIRST_ANSWER = {nb.number: nb.first_answer for nb in course.NOTEBOOKS}


def clean_env(home: Path, venv: Path, **extra: str) -> dict[str, str]:
    """The environment of a runtime's processes: this machine's network settings, a fresh
    HOME, the runtime's Python first on PATH, pip's configuration off (pip sees PyPI only,
    not this machine's wheel folders), and `extra`; nothing else of this machine's."""
    env = {k: os.environ[k] for k in NETWORK if k in os.environ}
    env.update(
        HOME=str(home),
        PATH=f"{venv / 'bin'}:{SYSTEM_PATH}",
        LANG="C.UTF-8",
        PIP_CONFIG_FILE=os.devnull,
        # debugpy's note about frozen modules, on every kernel's start: noise in the log
        PYDEVD_DISABLE_FILE_VALIDATION="1",
        **extra,
    )
    return env


def setup_cell_index(nb: nbformat.NotebookNode) -> int:
    """The setup cell: the first code cell (the notebooks' hygiene tests keep it second)."""
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            return index
    raise ValueError("no code cell: the notebook has no setup cell")


def rewrite_setup(nb: nbformat.NotebookNode, url: str) -> nbformat.NotebookNode:
    """The notebook with its setup cell installing from `url` instead of GitHub; nothing else
    changes (the URL must occur exactly once, else the cell is not the course's)."""
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    cell = nb.cells[setup_cell_index(nb)]
    github = links.pip_install_url()
    if cell.source.count(github) != 1:
        raise ValueError(f"the setup cell does not install {github} once:\n{cell.source}")
    cell.source = cell.source.replace(github, url)
    return nb


def first_answer_index(nb: nbformat.NotebookNode, notebook: str) -> int | None:
    """The index of the notebook's first-answer cell (FIRST_ANSWER), None where it has none."""
    fragment = FIRST_ANSWER.get(notebook[:2])
    if fragment is None:
        return None
    setup = setup_cell_index(nb)
    for index, cell in enumerate(nb.cells):
        if index > setup and cell.cell_type == "code" and fragment in cell.source:
            return index
    raise ValueError(f"{notebook}: no code cell after setup contains {fragment!r} (FIRST_ANSWER)")


@dataclass
class Runtime:
    """A runtime's folders: its HOME, its content folder (Colab's /content) and its kernel."""

    root: Path
    venv: Path
    drive: Path
    asset_url: str
    secrets: Path | None = None

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def content(self) -> Path:
        return self.root / "content"

    def create(self) -> Runtime:
        for folder in (self.home, self.content, self.root / "kernels" / KERNEL_NAME):
            folder.mkdir(parents=True, exist_ok=True)
        spec = {
            "argv": [
                str(self.venv / "bin" / "python"),
                "-m",
                "ipykernel_launcher",
                "-f",
                "{connection_file}",
                f"--IPKernelApp.kernel_class={KERNEL_CLASS}",
            ],
            "display_name": "Python 3 (Colab replica)",
            "language": "python",
        }
        (self.root / "kernels" / KERNEL_NAME / "kernel.json").write_text(json.dumps(spec))
        return self

    def env(self) -> dict[str, str]:
        extra = {
            "COLAB_RELEASE_TAG": COLAB_RELEASE_TAG,
            "LLMOPS_COLAB_CONTENT": str(self.content),
            "LLMOPS_LLAMA_RELEASE_URL": self.asset_url,
            "LLMOPS_REPLICA_DRIVE": str(self.drive),
        }
        if self.secrets:
            extra["LLMOPS_REPLICA_SECRETS"] = str(self.secrets)
        return clean_env(self.home, self.venv, **extra)

    def kernel_manager_class(self) -> type[AsyncKernelManager]:
        """A kernel manager that finds only this runtime's kernelspec (nbclient makes one per
        run, and shuts its kernel down)."""
        kernels = str(self.root / "kernels")

        class RuntimeKernelManager(AsyncKernelManager):
            @default("kernel_spec_manager")
            def _only_this_runtimes_kernels(self) -> KernelSpecManager:
                return KernelSpecManager(kernel_dirs=[kernels])

        return RuntimeKernelManager

    def processes(self) -> list[psutil.Process]:
        """Processes started in this runtime (they carry its content folder in their env)."""
        mine = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get("LLMOPS_COLAB_CONTENT") == str(self.content):
                    mine.append(proc)
            except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
        return mine


@dataclass
class Run:
    """One "Run all" of a notebook: seconds from the kernel's start (the badge click)."""

    notebook: str
    setup_cell: int
    first_answer_cell: int | None
    kernel_s: float | None = None
    setup_s: float | None = None  # the end of the setup cell
    setup_cell_s: float | None = None  # the setup cell alone
    first_answer_s: float | None = None
    total_s: float = 0.0
    cells_run: int = 0
    code_cells: int = 0
    error: str | None = None
    error_cell: int | None = None
    setup_output: list[str] = field(default_factory=list)
    executed: nbformat.NotebookNode | None = field(default=None, repr=False)


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # pip's colours


def text_of(outputs: list) -> list[str]:
    """The text a cell printed (streams, plain-text results, errors), without colours."""
    lines = []
    for out in outputs:
        if out.get("output_type") == "stream":
            lines += out.get("text", "").splitlines()
        elif out.get("output_type") == "error":
            lines.append(f"{out.get('ename')}: {out.get('evalue')}")
        elif "text/plain" in out.get("data", {}):
            lines += out["data"]["text/plain"].splitlines()
    return [plain for line in lines if (plain := ANSI.sub("", line).rstrip())]


def run_notebook(
    nb: nbformat.NotebookNode,
    notebook: str,
    runtime: Runtime,
    setup_limit_s: float,
    cell_limit_s: float,
    stop_after: int | None = None,
) -> Run:
    """Run the cells of `nb` in a fresh kernel of `runtime`, one after the other, stopping at
    the first error (as Colab's Run all does) or after cell `stop_after`."""
    setup, answer = setup_cell_index(nb), first_answer_index(nb, notebook)
    run = Run(notebook, setup, answer, code_cells=sum(c.cell_type == "code" for c in nb.cells))
    client = NotebookClient(
        nb,
        kernel_manager_class=runtime.kernel_manager_class(),
        kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(runtime.content)}},
        timeout=cell_limit_s,
        allow_errors=False,
    )
    start = time.monotonic()
    try:
        with client.setup_kernel(env=runtime.env()):
            run.kernel_s = time.monotonic() - start
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                client.timeout = int(setup_limit_s if index == setup else cell_limit_s)
                began = time.monotonic()
                try:
                    client.execute_cell(cell, index)
                except CellTimeoutError:
                    run.error = f"cell {index}: still running after {client.timeout:.0f} s"
                except CellExecutionError as e:
                    run.error = f"cell {index}: {e.ename}: {e.evalue}".splitlines()[0][:300]
                run.cells_run += 1
                now = time.monotonic() - start
                if index == setup:
                    run.setup_output = text_of(cell.outputs)[-8:]
                    run.setup_s, run.setup_cell_s = now, time.monotonic() - began
                if index == answer and run.error is None:
                    run.first_answer_s = now
                if run.error:
                    run.error_cell = index
                if run.error or index == stop_after:
                    break
    except Exception as e:  # the kernel did not start or died: the runtime is unusable
        run.error = run.error or f"kernel: {type(e).__name__}: {e}".splitlines()[0][:300]
    run.total_s = time.monotonic() - start
    run.executed = nb
    return run


def stop_leftovers(runtime: Runtime, grace_s: float = 2.0) -> list[str]:
    """Stop what the runtime's kernel left running (by process id); their names and ids."""
    time.sleep(grace_s)  # let the kernel's own shutdown finish first
    left = runtime.processes()
    names = []
    for proc in left:
        try:
            names.append(f"{proc.name()} (pid {proc.pid})")
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(left, timeout=10)
    return names
