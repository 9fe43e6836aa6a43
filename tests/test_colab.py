"""The Colab provisioning of llama.cpp (binding + tools), with Colab faked (no Colab here).

Each badge opens a NEW runtime: an empty local cache, no llama-cpp-python installed; Drive
(when mounted) and the release persist. The build script is replaced by a fake that writes
what the real one writes (a wheel, bin/ with the tools, tools.json) where the real one
would (it asks the real script for the folder); pip is recorded instead of run; the release
is a real HTTP server on 127.0.0.1 serving real archives with their sha256. The script
itself runs only with its options that build nothing, or on a copy of a real build.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import threading
from dataclasses import replace
from importlib import resources
from pathlib import Path

import pytest

from llmops_lib.core.hardware import Hardware
from llmops_lib.planning import colab, tools

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = resources.files("llmops_lib") / "data" / "build_llama_tools.sh"

# What the build script leaves behind, in the layout and folder it uses; FAKE_FAIL makes it fail.
FAKE_BUILD = r"""
import json, os, pathlib, subprocess, sys
out = subprocess.run(["bash", sys.argv[1], "--print-config"], capture_output=True, text=True,
                     check=True).stdout
config = dict(line.split("=", 1) for line in out.splitlines())
root = pathlib.Path(config["root"])
for pct in (10, 50, 100):
    print(f"  llama.cpp build {pct:3d}%")
if os.environ.get("FAKE_FAIL"):
    print("error: nvcc fatal : Unsupported gpu architecture"); sys.exit(3)
(root / "wheel").mkdir(parents=True); (root / "bin").mkdir()
version = config["version"]
(root / "wheel" / f"llama_cpp_python-{version}-py3-none-linux_x86_64.whl").write_bytes(b"whl")
tools = {}
for tool in sys.argv[2:]:
    (root / "bin" / tool).write_text("#!/bin/sh\n"); (root / "bin" / tool).chmod(0o755)
    tools[tool] = str(root / "bin" / tool)
info = {"llama_cpp_python": version, "backend": config["backend"],
        "baseline": config["baseline"],
        "cuda_major": int(config["cuda_major"]) if config["cuda_major"] else None,
        "cuda_architectures": os.environ.get("LLMOPS_CUDA_ARCHITECTURES"),
        "cmake_args": config["cmake_args"], "tools": tools}
(root / "tools.json").write_text(json.dumps(info))
"""


def gpu(name: str | None, cc: tuple[int, int] | None) -> Hardware:
    return Hardware("colab", 1, 2, 12.7, name, 15.8 if name else None, cc, False, False)


CPU, T4, L4 = gpu(None, None), gpu("Tesla T4", (7, 5)), gpu("NVIDIA L4", (8, 9))
PORTABLE = colab.PORTABLE


class Release:
    """The course's release assets on a real HTTP server on 127.0.0.1; `hits` the paths asked."""

    def __init__(self, folder: Path):
        self.folder, self.hits = folder, []
        folder.mkdir()
        hits = self.hits

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder))
        )
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def publish(self, archive: Path, name: str | None = None, sha256: str | None = None):
        """Serve `archive` as `name`.tar with its sha256 (or the given, wrong one)."""
        target = self.folder / f"{name or archive.stem}.tar"
        shutil.copy(archive, target)
        digest = sha256 or hashlib.sha256(target.read_bytes()).hexdigest()
        Path(f"{target}.sha256").write_text(f"{digest}  {target.name}\n")

    def downloads(self) -> list[str]:
        return [hit for hit in self.hits if hit.endswith(".tar")]


class FakeColab:
    """Runtimes: the content folder, Drive, a local cache, nvcc, the build script and pip,
    faked and recorded; the release is real (`Release`)."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, release: Release):
        self.tmp, self.monkeypatch, self.release = tmp_path, monkeypatch, release
        self.content = tmp_path / "content"
        self.content.mkdir()
        self.builds: list[dict[str, str]] = []  # the environment each build was given
        self.installs: list[str] = []
        self.installed: str | None = None  # the key of the build pip installed from
        self.runtimes = 0
        self.cuda = "12.8"
        real_popen, real_run = subprocess.Popen, subprocess.run

        def popen(cmd, *args, **kwargs):
            if cmd != ["bash", str(tools.SCRIPT)]:  # not a build: --print-config, nvcc
                return real_popen(cmd, *args, **kwargs)
            self.builds.append(kwargs["env"])
            fake = [sys.executable, "-c", FAKE_BUILD, str(tools.SCRIPT), *tools.TOOLS]
            return real_popen(fake, *args, **kwargs)

        def run(cmd, *args, **kwargs):
            if cmd[1:3] != ["-m", "pip"]:
                return real_run(cmd, *args, **kwargs)
            assert cmd[3:5] == ["install", "-q"] and "--no-deps" in cmd and kwargs["check"]
            self.installs.append(cmd[-1])
            self.installed = Path(cmd[-1]).parents[1].name

        monkeypatch.setattr(colab.subprocess, "Popen", popen)
        monkeypatch.setattr(colab.subprocess, "run", run)
        monkeypatch.setattr(colab.tools, "installed_key", lambda: self.installed)
        monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-fake")
        monkeypatch.setenv(colab.CONTENT_ENV, str(self.content))
        monkeypatch.setenv(colab.RELEASE_URL_ENV, release.url)
        monkeypatch.setenv("PATH", f"{tmp_path / 'nvcc'}{os.pathsep}{os.environ['PATH']}")
        self.new_runtime()

    def new_runtime(self, cuda: str = "12.8") -> None:
        """A fresh runtime (a badge click): an empty local cache, nothing installed, the
        given CUDA toolkit; Drive and the release stay."""
        self.runtimes += 1
        self.monkeypatch.setenv("LLMOPS_CACHE", str(self.tmp / f"runtime{self.runtimes}"))
        self.installed = None
        self.toolkit(cuda)

    def toolkit(self, cuda: str) -> None:
        """The CUDA toolkit's nvcc on PATH, of version `cuda`."""
        self.cuda = cuda
        nvcc = self.tmp / "nvcc" / "nvcc"
        nvcc.parent.mkdir(exist_ok=True)
        nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {cuda}, V{cuda}.93'\n")
        nvcc.chmod(0o755)

    def mount_drive(self) -> Path:
        (self.content / "drive" / "MyDrive").mkdir(parents=True, exist_ok=True)
        return self.drive

    @property
    def drive(self) -> Path:
        return self.content / "drive" / "MyDrive" / colab.DRIVE_FOLDER

    def archives(self) -> list[str]:
        return sorted(p.name for p in self.drive.glob("*"))

    def build_archive(self, hw: Hardware, cuda: str = "12.8") -> Path:
        """What the release workflow publishes for `hw`: the same script (faked) on a runner
        of its own with CUDA `cuda`, packed by `python -m llmops_lib.planning.colab --pack`."""
        cache, ours, builds = os.environ["LLMOPS_CACHE"], self.cuda, list(self.builds)
        runner = self.tmp / f"runner-{hw.gpu_name}-{cuda}"
        self.monkeypatch.setenv("LLMOPS_CACHE", str(runner))
        self.toolkit(cuda)
        variant = colab.wanted(hw)
        with contextlib.redirect_stdout(io.StringIO()):  # the runner's log, not the runtime's
            colab.build(variant, colab.RELEASE_CUDA_ARCHITECTURES if hw.has_gpu else None)
            colab.main(["--pack", variant.backend, str(runner / "assets")])
        self.monkeypatch.setenv("LLMOPS_CACHE", cache)
        self.toolkit(ours)
        self.builds[:] = builds
        return runner / "assets" / f"{variant.name}.tar"


@pytest.fixture
def release(tmp_path):
    served = Release(tmp_path / "release")
    yield served
    served.server.shutdown()
    served.server.server_close()


@pytest.fixture
def fake(tmp_path, monkeypatch, release):
    for name in ("FAKE_FAIL", "LLMOPS_CUDA_ARCHITECTURES", "LLMOPS_LLAMA_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("LLMOPS_CPU_BASELINE", raising=False)
    return FakeColab(tmp_path, monkeypatch, release)


# The key: what must never be mixed up.


def test_the_key_holds_version_backend_cuda_major_and_baseline_not_python():
    cpu, cuda12, cuda13 = colab.Variant("cpu"), colab.Variant("cuda", 12), colab.Variant("cuda", 13)
    assert len({cpu.name, cuda12.name, cuda13.name}) == 3
    assert cpu.name == f"llama-cpp-{colab.LLAMA_CPP_VERSION}-cpu-x86-64-v3"
    assert cuda12.key == f"{colab.LLAMA_CPP_VERSION}-cuda12-x86-64-v3"
    assert "py3" not in cuda12.name
    assert colab.Variant("cpu", baseline="native").key != cpu.key


@pytest.mark.parametrize(
    ("archs", "cc", "runs"),
    [
        ("75", (7, 5), True),
        ("75", (8, 9), True),  # its PTX is compiled for the newer GPU on first use
        ("75-real", (8, 9), False),
        ("89", (7, 5), False),
        ("80-real", (8, 6), True),  # device code runs within its major version
        (colab.RELEASE_CUDA_ARCHITECTURES, (7, 5), True),
        (colab.RELEASE_CUDA_ARCHITECTURES, (8, 9), True),
        (colab.RELEASE_CUDA_ARCHITECTURES, (12, 0), True),
        (colab.RELEASE_CUDA_ARCHITECTURES, (6, 1), False),
        (None, (7, 5), False),
    ],
)
def test_which_cuda_code_runs_on_which_gpu(archs, cc, runs):
    assert colab.covers(archs, cc) is runs


# Each badge: a new runtime.


def test_setup_provisions_nothing_so_00_01_02_99_never_wait(fake, monkeypatch, capsys):
    import llmops_lib

    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))  # the hook goes with the test
    session = llmops_lib.setup(profile="tiny", quiet=True)
    session.spec("chat"), session.choice("classifier")  # what 00-02 ask before any model
    assert fake.builds == [] and fake.installs == [] and fake.release.hits == []
    assert any(isinstance(f, colab.ProvisionOnImport) for f in sys.meta_path)
    assert "llama.cpp" not in capsys.readouterr().out


def test_a_new_runtime_restores_the_release_asset_without_building(fake, capsys):
    fake.release.publish(fake.build_archive(CPU))
    for badge in (1, 2):
        fake.new_runtime()
        said = colab.ensure_llama_cpp(CPU)
        assert fake.builds == [], f"badge {badge} compiled"
        assert "from the release asset" in said
    out = capsys.readouterr().out
    assert "Compiling" not in out and "Mount" not in out
    assert fake.release.downloads() == [f"/{colab.Variant('cpu').name}.tar"] * 2
    # The restored tools are found where tools.py looks, and run from local disk.
    root = colab.local_dir(colab.Variant("cpu"))
    assert fake.installs[-1].startswith(str(root / "wheel")) and fake.installed == root.name
    manifest = json.loads((root / "tools.json").read_text())
    assert set(manifest["tools"]) == set(tools.TOOLS)
    for path in manifest["tools"].values():
        assert Path(path).parent == root / "bin" and os.access(path, os.X_OK)
    assert list((root.parent / "downloads").glob("*")) == [], "the download is not kept twice"


def test_a_second_use_in_the_same_runtime_does_nothing(fake, capsys):
    fake.release.publish(fake.build_archive(CPU))
    colab.ensure_llama_cpp(CPU)
    capsys.readouterr()
    assert "tools in" in colab.ensure_llama_cpp(CPU)
    assert len(fake.installs) == 1 and len(fake.release.downloads()) == 1
    assert capsys.readouterr().out == ""


def test_a_truncated_archive_in_drive_is_set_aside_and_the_release_is_used(fake, capsys):
    archive = fake.build_archive(CPU)
    fake.release.publish(archive)
    drive = fake.mount_drive()
    drive.mkdir()
    with tarfile.open(archive) as tar:  # cut in the middle of the largest file (the wheel)
        biggest = max(tar.getmembers(), key=lambda m: m.size)
    cut = biggest.offset_data + biggest.size // 2  # the runtime recycled during the copy
    (drive / archive.name).write_bytes(archive.read_bytes()[:cut])
    said = colab.ensure_llama_cpp(CPU)
    assert "from the release asset" in said and fake.builds == []
    kept = fake.archives()
    assert len(kept) == 1 and kept[0].startswith(f"{archive.name}.bad-"), "renamed, not deleted"
    lines = [line for line in capsys.readouterr().out.splitlines() if "unusable" in line]
    assert len(lines) == 1 and "ReadError" in lines[0] and "next source" in lines[0]


def test_an_archive_missing_a_member_is_set_aside(fake, tmp_path, capsys):
    archive = fake.build_archive(CPU)
    drive = fake.mount_drive()
    drive.mkdir()
    with tarfile.open(archive) as full, tarfile.open(drive / archive.name, "w") as partial:
        for member in full.getmembers():
            if not member.name.endswith("/bin/llama-server"):
                partial.addfile(member, full.extractfile(member) if member.isfile() else None)
    colab.ensure_llama_cpp(CPU)  # no release: it builds
    assert "a tool is missing" in capsys.readouterr().out
    assert len(fake.builds) == 1 and any(".bad-" in name for name in fake.archives())


def test_a_download_with_the_wrong_sha256_is_set_aside_and_the_build_runs(fake, capsys):
    fake.release.publish(fake.build_archive(CPU), sha256="0" * 64)
    colab.ensure_llama_cpp(CPU)
    assert len(fake.builds) == 1
    out = capsys.readouterr().out
    assert "the release says 000000000000" in out and "release: checksum differs" in out
    downloads = colab.local_dir(colab.Variant("cpu")).parent / "downloads"
    assert [p.name.split(".bad-")[0] for p in downloads.glob("*")] == [
        f"{colab.Variant('cpu').name}.tar.part"
    ]


def test_no_asset_and_no_drive_builds_with_its_estimate_then_says_how_to_keep_it(fake, capsys):
    colab.ensure_llama_cpp(CPU)
    assert len(fake.builds) == 1
    out = capsys.readouterr().out
    estimate = colab.script_config(fake.builds[0])["estimate"]
    assert "measured" in estimate and f"({estimate})" in out
    assert "Drive: not mounted" in out and "release: not available" in out and "HTTP" in out
    assert out.index("llama.cpp build 100%") < out.index(colab.MOUNT_LINE), "hint after the build"


def test_a_build_is_kept_in_drive_and_the_next_runtime_restores_it(fake, capsys):
    fake.mount_drive()
    colab.ensure_llama_cpp(T4)
    assert fake.archives() == [f"{colab.Variant('cuda', 12).name}.tar"]
    fake.new_runtime()
    said = colab.ensure_llama_cpp(T4)
    assert len(fake.builds) == 1, "a new runtime restores the Drive archive, it does not build"
    assert "from Drive" in said and fake.installed == colab.Variant("cuda", 12).key
    assert f"/{colab.Variant('cuda', 12).name}.tar" not in fake.release.hits


def test_a_drive_that_cannot_take_the_build_does_not_fail_it(fake, capsys):
    (fake.mount_drive()).write_text("a file where the folder should be")
    said = colab.ensure_llama_cpp(CPU)
    assert "a build on this runtime" in said and fake.installed
    assert "Could not keep the build" in capsys.readouterr().out


@pytest.mark.parametrize(("first", "then"), [(CPU, T4), (T4, CPU)])
def test_cuda_never_takes_a_cpu_archive_nor_the_reverse(fake, first, then, capsys):
    other = fake.build_archive(first)
    fake.release.publish(other)
    drive = fake.mount_drive()
    drive.mkdir()
    shutil.copy(other, drive / f"{colab.wanted(then).name}.tar")  # under this runtime's name
    said = colab.ensure_llama_cpp(then)
    assert [env["LLMOPS_LLAMA_BACKEND"] for env in fake.builds] == [colab.wanted(then).backend]
    assert "a build on this runtime" in said
    assert f"not {colab.wanted(then).key}" in capsys.readouterr().out


def test_a_different_cuda_major_never_reuses_an_archive(fake, capsys):
    cuda12 = fake.build_archive(T4, cuda="12.8")
    fake.release.publish(cuda12)
    drive = fake.mount_drive()
    drive.mkdir()
    shutil.copy(cuda12, drive)
    assert "from Drive" in colab.ensure_llama_cpp(T4)
    assert fake.builds == [] and fake.installed == colab.Variant("cuda", 12).key
    fake.new_runtime(cuda="13.0")  # a later Colab image
    colab.ensure_llama_cpp(T4)
    assert len(fake.builds) == 1 and fake.installed == colab.Variant("cuda", 13).key
    assert fake.archives() == sorted(f"{colab.Variant('cuda', n).name}.tar" for n in (12, 13))


def test_the_build_is_portable_and_compiles_only_this_gpus_architecture(fake):
    for hw in (T4, L4, CPU):
        fake.new_runtime()
        colab.ensure_llama_cpp(hw)
    t4, l4, cpu = fake.builds
    assert (t4["LLMOPS_CUDA_ARCHITECTURES"], l4["LLMOPS_CUDA_ARCHITECTURES"]) == ("75", "89")
    assert "LLMOPS_CUDA_ARCHITECTURES" not in cpu
    for env in fake.builds:
        assert env["LLMOPS_CPU_BASELINE"] == colab.PORTABLE
        assert env["LLAMA_CPP_VERSION"] == colab.LLAMA_CPP_VERSION
        assert env["PYTHON"] == sys.executable
    assert [env["LLMOPS_CACHE"] for env in fake.builds] == [
        str(fake.tmp / f"runtime{n}") for n in (2, 3, 4)
    ]


def test_an_archive_without_code_for_this_gpu_is_not_used(fake, capsys):
    fake.mount_drive()
    colab.ensure_llama_cpp(L4)  # builds for 8.9 only, kept in Drive
    fake.new_runtime()
    colab.ensure_llama_cpp(T4)
    assert [env["LLMOPS_CUDA_ARCHITECTURES"] for env in fake.builds] == ["89", "75"]
    assert "does not run on this GPU (compute 7.5)" in capsys.readouterr().out


def test_a_failed_build_raises_with_its_last_lines_and_keeps_nothing(fake, monkeypatch):
    fake.mount_drive()
    monkeypatch.setenv("FAKE_FAIL", "1")
    with pytest.raises(RuntimeError, match=r"(?s)exit 3.*Unsupported gpu architecture"):
        colab.ensure_llama_cpp(T4)
    assert fake.archives() == [] and fake.installs == []


def test_elsewhere_nothing_new_happens(fake, monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG")
    assert colab.ensure_llama_cpp(CPU) is None
    assert fake.builds == fake.installs == fake.release.hits == []


# Who asks for llama.cpp: every first use, and nothing else.


def test_each_first_use_of_llama_cpp_asks_for_it_and_nothing_else_does(monkeypatch, tmp_path):
    from llmops_lib.planning import profiles, provision
    from llmops_lib.session import Session

    asked: list[str] = []
    monkeypatch.setattr(colab, "ensure_llama_cpp", lambda hw=None: asked.append("asked"))
    session = Session(profiles.resolve("tiny", CPU), replace(CPU, runtime="local"))

    def no_file(spec):
        raise LookupError("stop before loading")

    monkeypatch.setattr(provision, "gguf_path", no_file)
    session.spec("chat"), session.choice("classifier")
    assert asked == []
    with pytest.raises(LookupError):
        session.model("chat")  # a llama.cpp model
    with pytest.raises(LookupError):
        session.server("llama_cpp.server")
    monkeypatch.setenv("LLMOPS_CACHE", str(tmp_path))
    tools.missing("llama-bench")  # a native tool
    colab.ProvisionOnImport().find_spec("llama_cpp")
    colab.ProvisionOnImport().find_spec("llama_cpp_agent")
    colab.ProvisionOnImport().find_spec("numpy")
    assert asked == ["asked"] * 4


# The names and archives that the release workflow and the replica use.


def test_the_cli_names_the_asset_and_packs_it_with_its_sha256(fake, capsys, tmp_path):
    colab.main(["--asset-name", "cpu"])
    assert capsys.readouterr().out.strip() == colab.Variant("cpu").name
    colab.main(["--asset-name", "cuda"])  # nvcc 12.8 on this fake runtime
    assert capsys.readouterr().out.strip() == colab.Variant("cuda", 12).name
    archive = fake.build_archive(CPU)
    check = subprocess.run(
        ["sha256sum", "-c", f"{archive.name}.sha256"], cwd=archive.parent, capture_output=True
    )
    assert check.returncode == 0, check.stdout
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    folder = colab.Variant("cpu").key
    assert f"{folder}/tools.json" in names and f"{folder}/bin/llama-server" in names
    assert any(re.fullmatch(rf"{folder}/wheel/llama_cpp_python-.*\.whl", n) for n in names)
    with pytest.raises(SystemExit):  # nothing built in this runtime's cache
        colab.main(["--pack", "cpu", str(tmp_path / "nothing")])


def test_the_release_url_defaults_to_the_courses_github_release(monkeypatch):
    from llmops_lib.core import links

    monkeypatch.delenv(colab.RELEASE_URL_ENV, raising=False)
    assert colab.release_url() == (
        f"https://github.com/{links.GITHUB_SLUG}/releases/download/{colab.RELEASE_TAG}"
    )
    monkeypatch.delenv(colab.CONTENT_ENV, raising=False)
    assert colab.content_dir() == Path("/content")


# The build script itself: shipped in the package, one recipe for a checkout and for Colab.


def _script(*args: str, script=SCRIPT, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMA_CPP", "LLMOPS_"))}
    clean.pop("PYTHON", None)
    return subprocess.run(
        ["bash", str(script), *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _config(result: subprocess.CompletedProcess) -> dict[str, str]:
    assert result.returncode == 0, result.stderr
    return dict(line.split("=", 1) for line in result.stdout.splitlines())


def test_the_build_script_ships_in_the_package():
    assert SCRIPT.is_file() and Path(str(SCRIPT)) == tools.SCRIPT
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'llmops_lib = \[[^]]*"data/\*"', pyproject), "package data covers data/"
    assert not (ROOT / "scripts" / "build_llama_tools.sh").exists(), "one copy only"


def test_in_a_checkout_the_version_comes_from_requirements_txt():
    pin = re.search(
        r"^llama-cpp-python(\[[^]]*\])?==(\S+)", (ROOT / "requirements.txt").read_text(), re.M
    )
    config = _config(_script("--print-config", LLMOPS_LLAMA_BACKEND="cpu"))
    assert config["version"] == pin[2] == colab.LLAMA_CPP_VERSION
    assert "-DGGML_CUDA" not in config["cmake_args"]
    clash = _script("--print-config", LLAMA_CPP_VERSION="0.0.1")
    assert clash.returncode == 1 and "requirements.txt pins" in clash.stderr


def test_a_local_build_is_portable_by_default_and_native_only_when_asked():
    default = _config(_script("--print-config", LLMOPS_LLAMA_BACKEND="cpu"))
    native = _config(
        _script("--print-config", LLMOPS_LLAMA_BACKEND="cpu", LLMOPS_CPU_BASELINE="native")
    )
    if platform.machine() == "x86_64":  # the portable baseline: what a release ships
        assert default["key"] == colab.Variant("cpu").key
        for flag in ("NATIVE=OFF", "AVX2=ON", "FMA=ON", "F16C=ON", "BMI2=ON", "AVX512=OFF"):
            assert f"-DGGML_{flag}" in default["cmake_args"]
        assert "-DGGML_AMX_TILE=OFF" in default["cmake_args"]
    # native: this CPU's flags name it, so a cache carried to another CPU is never reused
    flags = next(
        line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
    )
    label = "native-" + hashlib.sha256(f"{flags}\n".encode()).hexdigest()[:8]
    assert native["key"] == colab.Variant("cpu", baseline=label).key
    assert "GGML_NATIVE" not in native["cmake_args"]  # ggml's default: -march=native
    bad = _script("--print-config", LLMOPS_CPU_BASELINE="v4")
    assert bad.returncode == 1 and "native or x86-64-v3" in bad.stderr


def test_the_script_and_colab_agree_on_every_folder(fake):
    for hw in (CPU, T4):
        variant = colab.wanted(hw)
        env = dict(os.environ, LLMOPS_LLAMA_BACKEND=variant.backend, LLMOPS_CPU_BASELINE=PORTABLE)
        config = colab.script_config(env)
        assert config["key"] == variant.key and Path(config["root"]) == colab.local_dir(variant)


def test_print_wheel_finds_the_existing_build_without_building():
    if tools.missing() is not None:
        pytest.skip("llama.cpp is not built here (make setup)")
    built = tools.tools_dir()
    before = sorted(p.name for p in built.iterdir())
    result = _script("--print-wheel", LLMOPS_CACHE=str(built.parents[1]))
    assert result.returncode == 0, result.stderr
    wheel = Path(result.stdout.strip())
    assert wheel.is_file() and wheel.parent == built / "wheel"
    assert f"-{colab.LLAMA_CPP_VERSION}-" in wheel.name
    assert sorted(p.name for p in built.iterdir()) == before, "nothing built or removed"


def test_without_a_checkout_the_caller_gives_version_backend_python_and_gpus(tmp_path):
    installed = tmp_path / "site-packages" / "llmops_lib" / "data" / "build_llama_tools.sh"
    installed.parent.mkdir(parents=True)
    shutil.copy(SCRIPT, installed)
    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.parent.mkdir()
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.8, V12.8.93'\n")
    nvcc.chmod(0o755)
    config = _config(
        _script(
            "--print-config",
            script=installed,
            LLAMA_CPP_VERSION="9.9.9",
            PYTHON="/usr/bin/python3",
            LLMOPS_LLAMA_BACKEND="cuda",
            LLMOPS_CPU_BASELINE="x86-64-v3",
            LLMOPS_CUDA_ARCHITECTURES="75",
            LLMOPS_CACHE=str(tmp_path / "cache"),
            PATH=f"{nvcc.parent}{os.pathsep}{os.environ['PATH']}",
        )
    )
    assert config["version"] == "9.9.9" and config["backend"] == "cuda"
    assert config["python"] == "/usr/bin/python3" and config["cuda_major"] == "12"
    assert config["root"] == str(tmp_path / "cache" / "llama-tools" / "9.9.9-cuda12-x86-64-v3")
    assert "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=75" in config["cmake_args"]
    assert "estimate" in config["estimate"], "a CUDA time is not measured here: it says so"
    no_version = _script("--print-config", script=installed)
    assert no_version.returncode == 1 and "set LLAMA_CPP_VERSION" in no_version.stderr


def test_the_real_build_survives_the_round_trip_through_an_archive(tmp_path, monkeypatch):
    """Symlinked libraries, exec bits and $ORIGIN RPATH: the restored llama-server starts."""
    if tools.missing() is not None:
        pytest.skip("llama.cpp is not built here (make setup)")
    built = tools.tools_dir()
    archive = colab.store(built, tmp_path / "drive" / "build.tar")
    monkeypatch.setenv("LLMOPS_CACHE", str(tmp_path / "new-runtime"))
    root = colab.restore(archive, tmp_path / "new-runtime" / "llama-tools" / built.name)
    assert colab.complete(root)
    server = json.loads((root / "tools.json").read_text())["tools"]["llama-server"]
    assert server == str(root / "bin" / "llama-server")
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    run = subprocess.run([server, "--version"], env=env, capture_output=True, timeout=30)
    assert run.returncode == 0, run.stderr
