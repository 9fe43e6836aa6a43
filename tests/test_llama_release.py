"""The llama.cpp builds the course ships: the build script's check, the portable baseline,
the release workflow, and a real release asset installed into a running interpreter.

The check runs on real ELF files: a copy of this machine's build, or tiny programs gcc
links against a stand-in for the GPU driver (libcuda.so.1), placed where Colab has it (on
LD_LIBRARY_PATH only). Nothing here compiles llama.cpp.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from llmops_lib.planning import colab, provision, tools

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = tools.SCRIPT
WORKFLOW = ROOT / ".github" / "workflows" / "llama-release.yml"
BIN = Path(sys.executable).parent  # actionlint and shellcheck come with requirements-dev.txt
needs_build = pytest.mark.skipif(
    tools.missing() is not None, reason="llama.cpp is not built here (make setup)"
)


def _env(**extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMA_CPP", "LLMOPS_"))}
    clean.pop("LD_LIBRARY_PATH", None)
    return {**clean, "PYTHON": sys.executable, **extra}


def _run_script(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120
    )


def _config(env: dict[str, str]) -> dict[str, str]:
    out = _run_script(env, "--print-config").stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def _stage(root: Path, env: dict[str, str]) -> None:
    """Mark `root` as a finished compile for the options of `env` (what the script writes
    right after compiling), so that a run of the script goes straight to its check."""
    config = _config(env)
    assert Path(config["root"]) == root
    (root / "compiled").write_text(config["cmake_args"])


# The check after the compile: it keeps the compile, and says what the loader says.


@needs_build
def test_a_failed_check_keeps_the_compile_and_a_rerun_repeats_only_the_check(tmp_path):
    pip_log = tmp_path / "pip-calls"
    python = tmp_path / "python"  # records every pip call, so a compile would show
    python.write_text(
        f'#!/bin/sh\n[ "$1" = -m ] && echo "$*" >> {pip_log}\nexec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    env = _env(LLMOPS_CACHE=str(tmp_path / "cache"), LLMOPS_LLAMA_BACKEND="cpu", PYTHON=str(python))
    root = Path(_config(env)["root"])  # where this machine's default build goes
    for part in ("bin", "wheel"):
        shutil.copytree(tools.tools_dir() / part, root / part, symlinks=True)
    _stage(root, env)
    (root / "bin" / "libggml-base.so.0").rename(tmp_path / "libggml-base.so.0")

    failed = _run_script(env)
    assert failed.returncode == 1
    assert "libggml-base.so.0 => not found" in failed.stderr, "the loader's words are shown"
    assert "only the check is repeated" in failed.stderr
    assert not (root / "tools.json").exists() and (root / "compiled").exists()

    (tmp_path / "libggml-base.so.0").rename(root / "bin" / "libggml-base.so.0")
    fixed = _run_script(env)
    assert fixed.returncode == 0, fixed.stderr
    assert (
        "compile of an earlier run is kept" in fixed.stdout
        and "llama-server starts" in fixed.stdout
    )
    assert not pip_log.exists(), "nothing was compiled again"
    manifest = json.loads((root / "tools.json").read_text())
    assert manifest["baseline"] == _config(env)["baseline"]
    assert manifest["tools"]["llama-server"] == str(root / "bin" / "llama-server")


def _gcc(*args: str) -> None:
    subprocess.run(["gcc", *args], check=True, capture_output=True)


def _shared_library(path: Path, source: Path) -> None:
    """A shared library at `path`, its SONAME the file's name, as the loader looks it up."""
    _gcc("-shared", "-fPIC", f"-Wl,-soname,{path.name}", "-o", str(path), str(source))


@pytest.fixture
def cuda_build(tmp_path):
    """A CUDA 'build' of real ELF files, linked as ggml-cuda links: libcuda.so.1 (the driver,
    here a stand-in in driver/), libcublas.so.12 (the toolkit's, by its RPATH) and the
    build's own libllama.so beside the tools ($ORIGIN); plus nvcc and nvidia-smi stand-ins."""
    driver, toolkit, fakes = tmp_path / "driver", tmp_path / "toolkit", tmp_path / "fakes"
    for folder in (driver, toolkit, fakes):
        folder.mkdir()
    src = tmp_path / "src"
    src.mkdir()
    (src / "lib.c").write_text("int cuInit(int flags) { return flags; }\n")
    (src / "main.c").write_text(
        '#include <stdio.h>\nint cuInit(int);\nint main(void) { puts("version: 1 (fake)"); '
        "return cuInit(0); }\n"
    )
    _shared_library(driver / "libcuda.so.1", src / "lib.c")
    _shared_library(toolkit / "libcublas.so.12", src / "lib.c")
    env = _env(
        LLMOPS_CACHE=str(tmp_path / "cache"),
        LLMOPS_LLAMA_BACKEND="cuda",
        LLMOPS_CPU_BASELINE="x86-64-v3",
        LLMOPS_CUDA_ARCHITECTURES="75",
        PATH=f"{fakes}{os.pathsep}{os.environ['PATH']}",
    )
    (fakes / "nvcc").write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.8'\n")
    (fakes / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: Tesla T4'\n")
    for fake in fakes.iterdir():
        fake.chmod(0o755)
    root = tmp_path / "cache" / "llama-tools" / colab.Variant("cuda", 12).key
    (root / "bin").mkdir(parents=True)
    (root / "wheel").mkdir()
    wheel = f"llama_cpp_python-{colab.LLAMA_CPP_VERSION}-py3-none-linux_x86_64.whl"
    (root / "wheel" / wheel).write_bytes(b"")
    _shared_library(root / "bin" / "libllama.so", src / "lib.c")
    tool = tmp_path / "tool"
    _gcc(
        "-o", str(tool), str(src / "main.c"), "-Wl,--no-as-needed",
        f"-L{root / 'bin'}", "-lllama", f"-L{driver}", "-l:libcuda.so.1",
        f"-L{toolkit}", "-l:libcublas.so.12", "-Wl,-rpath,$ORIGIN", f"-Wl,-rpath,{toolkit}",
    )  # fmt: skip
    for name in tools.TOOLS:
        shutil.copy(tool, root / "bin" / name)
    _stage(root, env)
    return root, env, driver, fakes


def test_on_colab_the_cuda_build_is_checked_with_its_ld_library_path(cuda_build):
    root, env, driver, _ = cuda_build
    without = _run_script(env)  # the old smoke test's situation: env -u LD_LIBRARY_PATH
    assert without.returncode == 1 and "libcuda.so.1 does not" in without.stderr
    assert "/usr/lib64-nvidia" in without.stderr and not (root / "tools.json").exists()
    colab_like = _run_script({**env, "LD_LIBRARY_PATH": str(driver)})
    assert colab_like.returncode == 0, colab_like.stderr
    assert "llama-server starts (version: 1 (fake))" in colab_like.stdout
    assert json.loads((root / "tools.json").read_text())["cuda_architectures"] == "75"


def test_without_a_gpu_driver_the_cuda_check_still_checks_every_other_library(cuda_build):
    root, env, _, fakes = cuda_build
    (fakes / "nvidia-smi").unlink()  # a release runner: a toolkit, no GPU, no driver
    (root / "bin" / "libllama.so").rename(root / "libllama.so")
    broken = _run_script(env)
    assert broken.returncode == 1 and "libllama.so => not found" in broken.stderr
    (root / "libllama.so").rename(root / "bin" / "libllama.so")
    checked = _run_script(env)
    assert checked.returncode == 0, checked.stderr
    assert "every library the tools need resolves but the GPU driver" in checked.stdout


# The portable baseline: no AVX-512 instruction, though this machine has AVX-512.


def _zmm_instructions(build: Path) -> int:
    libs = sorted((build / "bin").glob("libggml-cpu*.so"))
    assert libs, f"no libggml-cpu in {build / 'bin'}"
    listing = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(libs[0])],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum("%zmm" in line for line in listing.splitlines())


def test_the_portable_cpu_build_holds_no_avx512_code():
    portable = provision.cache_dir() / "llama-tools" / colab.Variant("cpu").key
    if not colab.complete(portable):
        pytest.skip(f"no portable build in {portable} (scripts/build_release_assets.sh cpu DIR)")
    assert _zmm_instructions(portable) == 0
    assert "avx2" in json.loads((portable / "tools.json").read_text())["cmake_args"].lower()
    mine = _env(
        LLMOPS_LLAMA_BACKEND="cpu",
        LLMOPS_CPU_BASELINE="native",
        LLMOPS_CACHE=str(provision.cache_dir()),
    )
    native = Path(_config(mine)["root"])  # this machine's native build, if one was made
    if colab.complete(native) and "avx512f" in Path("/proc/cpuinfo").read_text():
        assert _zmm_instructions(native) > 0, "the same count finds AVX-512 in a native build"


# The release workflow: it cannot run here, so it is linted and read.


def test_the_release_workflow_passes_actionlint(tmp_path):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}  # + shellcheck
    result = subprocess.run(
        [str(BIN / "actionlint"), str(WORKFLOW)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on: ubuntu-22.04 #", "runs-on: [#"))
    assert subprocess.run([str(BIN / "actionlint"), str(broken)], capture_output=True).returncode


def test_the_workflow_builds_both_archives_on_colabs_os_with_the_course_script():
    flow = yaml.safe_load(WORKFLOW.read_text())
    build = flow["jobs"]["build"]
    assert build["runs-on"] == "ubuntu-22.04" and build["strategy"]["matrix"]["backend"] == [
        "cpu",
        "cuda",
    ]
    steps = build["steps"]
    assert any(s.get("with", {}).get("python-version") == "3.13" for s in steps)
    runs = "\n".join(s.get("run", "") for s in steps)
    assert "cuda-nvcc-12-8" in runs and "/usr/local/cuda-12.8/bin" in runs
    assert 'scripts/build_release_assets.sh "${{ matrix.backend }}" assets' in runs
    assert "gh release upload" in runs and "*.tar.sha256" in runs
    assert flow[True]["push"]["tags"] == ["llama-cpp-*"]  # YAML reads the key `on` as True
    assert colab.RELEASE_TAG.startswith("llama-cpp-")


def test_the_build_scripts_pass_shellcheck():
    scripts = [SCRIPT, ROOT / "scripts" / "build_release_assets.sh"]
    result = subprocess.run(
        [str(BIN / "shellcheck"), *map(str, scripts)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


# A real archive from a real server, into an interpreter that has never seen llama_cpp.


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.model
@needs_build
def test_a_release_asset_is_imported_in_the_same_kernel_that_installed_it(tmp_path):
    """A fresh interpreter (this .venv's packages but llama-cpp-python), Colab's variables, no
    Drive, an empty cache: `import llama_cpp` downloads the archive, checks its sha256,
    restores it, installs the wheel and imports it, in that one process. The archive is this
    machine's build under the portable name (it runs here either way)."""
    variant = colab.Variant("cpu")
    staged = colab.restore(
        colab.store(tools.tools_dir(), tmp_path / "local.tar"), tmp_path / variant.key
    )
    manifest = json.loads((staged / "tools.json").read_text())
    (staged / "tools.json").write_text(json.dumps({**manifest, "baseline": variant.baseline}))
    assets = tmp_path / "assets"
    archive = colab.store(staged, assets / f"{variant.name}.tar")
    Path(f"{archive}.sha256").write_text(f"{hashlib.sha256(archive.read_bytes()).hexdigest()}  x\n")

    site = Path(next(p for p in sys.path if p.endswith("site-packages")))
    farm = tmp_path / "farm"  # everything the .venv has, except llama-cpp-python
    farm.mkdir()
    for entry in site.iterdir():
        if not entry.name.startswith(("llama_cpp", "__editable__")) and entry.suffix != ".pth":
            (farm / entry.name).symlink_to(entry)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (next(venv.glob("lib/python*/site-packages")) / "course.pth").write_text(f"{farm}\n{ROOT}\n")
    child = (
        "import importlib.util\n"
        "assert importlib.util.find_spec('llama_cpp') is None\n"
        "import llmops_lib\n"
        "llmops_lib.setup(profile='tiny', quiet=True)\n"
        "import llama_cpp\n"
        "print('imported', llama_cpp.__version__, llama_cpp.llama_supports_gpu_offload())\n"
        "from llmops_lib.planning import tools\n"
        "print('server', tools.tool_path('llama-server'))\n"
    )
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(assets))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = _env(
            COLAB_RELEASE_TAG="release-colab-test",
            LLMOPS_COLAB_CONTENT=str(tmp_path / "content"),
            LLMOPS_LLAMA_RELEASE_URL=f"http://127.0.0.1:{server.server_address[1]}",
            LLMOPS_CACHE=str(tmp_path / "new-runtime"),
            PIP_DISABLE_PIP_VERSION_CHECK="1",
        )
        run = subprocess.run(
            [str(venv / "bin" / "python"), "-c", child],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"imported {colab.LLAMA_CPP_VERSION} False" in run.stdout
    assert "from the release asset" in run.stdout and "Compiling" not in run.stdout
    restored = tmp_path / "new-runtime" / "llama-tools" / variant.key
    assert f"server {restored / 'bin' / 'llama-server'}" in run.stdout
