"""scripts/install_torch.py: the torch build that fits the machine, and a quick fallback.

The machine is faked (OS, NVIDIA GPU or not); pip is real, in a virtual environment of its
own, against indexes served here: a "CPU index" and a "default index" on 127.0.0.1 (one
carries a CPU build of torch, the other a build that ships libtorch_cuda), a closed port
for an index that cannot be reached, and a local wheel folder.
"""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
import threading
import venv
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest

from llmops_lib.engines.process import free_port

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("install_torch", REPO / "scripts/install_torch.py")
install_torch = sys.modules["install_torch"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(install_torch)
Machine = install_torch.Machine

LAPTOP = Machine("Linux", nvidia_gpu=False)


def test_only_linux_without_an_nvidia_gpu_asks_the_cpu_index():
    cpu = install_torch.CPU_INDEX
    first, then = install_torch.steps(LAPTOP)
    assert first[first.index("--index-url") + 1] == cpu and "--no-deps" in first
    assert then == [install_torch.TORCH]
    for machine in (Machine("Linux", True), Machine("Darwin", False), Machine("Darwin", True)):
        assert install_torch.steps(machine) == [[install_torch.TORCH]]


@pytest.mark.parametrize("listed, gpu", [("GPU 0: NVIDIA T4 (UUID: GPU-1)", True), ("", False)])
def test_detect_asks_the_nvidia_driver(tmp_path, monkeypatch, listed, gpu):
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho '{listed}'\n[ -n '{listed}' ]\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert install_torch.detect().nvidia_gpu is gpu


def test_without_nvidia_smi_there_is_no_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert install_torch.detect().nvidia_gpu is False


def _wheel(folder: Path, version: str, cuda: bool, payload_bytes: int) -> Path:
    """A wheel named torch: metadata, a marker file, and incompressible bytes to download."""
    dist = f"torch-{version}.dist-info"
    files = {
        "torch/__init__.py": b"",
        "torch/payload.bin": os.urandom(payload_bytes),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    if cuda:
        files["torch/lib/libtorch_cuda.so"] = b""
    files[f"{dist}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{dist}/RECORD"]).encode()
    path = folder / f"torch-{version}-py3-none-any.whl"
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
    path.write_bytes(buffer.getvalue())
    return path


def _simple_index(root: Path, wheel: Path) -> None:
    """A PEP 503 project page for torch under root/ that links the wheel."""
    (root / "torch").mkdir(parents=True)
    (root / wheel.name).write_bytes(wheel.read_bytes())
    page = f'<html><body><a href="../{wheel.name}">{wheel.name}</a></body></html>'
    (root / "torch" / "index.html").write_text(page)


@pytest.fixture(scope="module")
def indexes(tmp_path_factory):
    """Both indexes on one server at 127.0.0.1: /cpu (a CPU build), /pypi (a CUDA build)."""
    root = tmp_path_factory.mktemp("indexes")
    wheels = tmp_path_factory.mktemp("wheels")
    cpu = _wheel(wheels / "cpu", f"{install_torch.VERSION}+cpu", False, 1_500_000)
    cuda = _wheel(wheels / "cuda", install_torch.VERSION, True, 2_500_000)
    _simple_index(root / "cpu", cpu)
    _simple_index(root / "pypi", cuda)
    asked: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            asked.append(self.path)

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=root))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    yield {"url": url, "asked": asked, "cpu": cpu, "cuda": cuda, "local": cpu.parent}
    server.shutdown()


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """A virtual environment of its own, with pip and nothing else."""
    folder = tmp_path_factory.mktemp("venv")
    venv.create(folder, with_pip=True)
    return str(folder / "bin" / "python")


@pytest.fixture
def pip(target, indexes, monkeypatch):
    """pip in that environment, with no configuration of this machine's and torch uninstalled
    afterwards; the default index is the server's /pypi."""
    for name in [n for n in os.environ if n.startswith("PIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    monkeypatch.setenv("PIP_INDEX_URL", indexes["url"] + "/pypi")
    indexes["asked"].clear()
    yield (target, "-m", "pip", "install", "--progress-bar", "off")
    subprocess.run([target, "-m", "pip", "uninstall", "-y", "-q", "torch"], check=True)


def _mb(path: Path) -> float:
    return path.stat().st_size / 1e6


@pytest.mark.model  # real pip against servers
def test_laptop_gets_the_cpu_build_from_the_cpu_index(pip, indexes):
    report = install_torch.install(LAPTOP, pip, cpu_index=indexes["url"] + "/cpu")
    assert report.installed == install_torch.Installed(f"{install_torch.VERSION}+cpu", False)
    assert report.downloaded_mb == pytest.approx(_mb(indexes["cpu"]), abs=0.1)
    assert not report.cpu_index_failed
    assert f"/cpu/{quote(indexes['cpu'].name)}" in indexes["asked"]
    line = install_torch.summary(report)
    assert "(CPU build)" in line and f"{report.downloaded_mb:.1f} MB downloaded" in line

    # A second setup keeps it and asks no index.
    indexes["asked"].clear()
    again = subprocess.run(
        [pip[0], str(REPO / "scripts/install_torch.py")], capture_output=True, text=True
    )
    assert again.returncode == 0 and "already installed" in again.stdout
    assert indexes["asked"] == []


@pytest.mark.model
def test_laptop_falls_back_to_the_default_index_when_the_cpu_index_is_unreachable(
    pip, indexes, capsys
):
    closed = f"http://127.0.0.1:{free_port()}/cpu"
    report = install_torch.install(LAPTOP, pip, cpu_index=closed)
    assert report.installed == install_torch.Installed(install_torch.VERSION, True)
    assert report.cpu_index_failed
    assert report.downloaded_mb == pytest.approx(_mb(indexes["cuda"]), abs=0.1)
    assert "falling back to the default index" in capsys.readouterr().out
    assert "(CUDA build)" in install_torch.summary(report)


@pytest.mark.model
def test_a_cpu_wheel_in_a_local_folder_is_used_when_the_cpu_index_is_unreachable(
    pip, indexes, monkeypatch
):
    monkeypatch.setenv("PIP_FIND_LINKS", str(indexes["local"]))
    closed = f"http://127.0.0.1:{free_port()}/cpu"
    report = install_torch.install(LAPTOP, pip, cpu_index=closed)
    assert report.installed == install_torch.Installed(f"{install_torch.VERSION}+cpu", False)
    assert report.downloaded_mb == 0 and not report.cpu_index_failed


def test_setup_installs_torch_through_the_script():
    setup = (REPO / "scripts/setup_env.sh").read_text()
    assert ".venv/bin/python scripts/install_torch.py\n" in setup
