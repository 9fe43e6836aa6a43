"""`make lab` starts JupyterLab wherever the README says it does: as root, without a display.

The test runs scripts/lab.sh, the command the Makefile's `lab` target runs, on a free port,
as whoever runs the tests (root in containers and CI, a normal user on a laptop).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from llmops_lib.engines.process import free_port, port_is_free

REPO = Path(__file__).resolve().parents[1]
LAB = REPO / "scripts" / "lab.sh"


def test_the_makefile_starts_lab_through_the_script():
    recipe = re.search(r"^lab:.*\n\t(.+)$", (REPO / "Makefile").read_text(), re.M)
    assert recipe and recipe.group(1).split()[0] == "scripts/lab.sh"


def _wait_for_token_url(proc: subprocess.Popen, log: Path, port: int) -> str:
    """The URL with its token, as JupyterLab prints it for a person to open."""
    pattern = re.compile(rf"http://127\.0\.0\.1:{port}/lab\?token=\w+")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        found = pattern.search(log.read_text(errors="replace"))
        if found:
            return found.group(0)
        assert proc.poll() is None, f"lab exited with {proc.returncode}:\n{log.read_text()}"
        time.sleep(0.2)
    raise AssertionError(f"no URL with a token within 90 s:\n{log.read_text()}")


def _status(url: str) -> int:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    try:
        with urllib.request.build_opener(NoRedirect).open(url, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.model  # starts a server
@pytest.mark.parametrize("display", [None, ":99"], ids=["no-display", "display"])
def test_lab_serves_with_its_token_and_is_gone_after_ctrl_c(tmp_path, display):
    port = free_port()
    opened = tmp_path / "browser-opened"
    browser = tmp_path / "browser"  # stands in for the desktop's browser: notes what it was given
    browser.write_text(f'#!/bin/sh\necho "$@" >> {opened}\n')
    browser.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in {"DISPLAY", "WAYLAND_DISPLAY"}}
    env |= {
        "BROWSER": str(browser),
        # The user's own Jupyter settings and runtime files stay out of it.
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
    }
    if display:
        env["DISPLAY"] = display
    log = tmp_path / "lab.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [LAB, f"--ServerApp.port={port}", "--ServerApp.port_retries=0"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # a process group of its own, as a terminal's job is
            # and Ctrl-C armed, as in a terminal: a test runner started in the background
            # (`make test &`) passes on an ignored SIGINT, and Jupyter would never see it
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    family: list[psutil.Process] = []
    try:
        url = _wait_for_token_url(proc, log, port)
        assert _status(url) == 200
        assert _status(url.split("?")[0]) == 302  # without the token: the login page
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        # Jupyter opens the browser from a thread of its own as it prints the URL.
        deadline = time.monotonic() + (10 if display else 1)
        while not opened.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert opened.exists() == bool(display), "a browser opens only where there is a display"
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's job
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    _, alive = psutil.wait_procs(family, timeout=10)
    assert not alive
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)
    assert port_is_free(port)

    lines = log.read_text().splitlines()
    assert any("--allow-root" in line for line in lines) == (os.geteuid() == 0)
    assert any(line.startswith("lab: no display") for line in lines) == (not display)
