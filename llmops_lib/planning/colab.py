"""On Colab: llama.cpp for the runtime's backend, on first use, compiled only as the last resort.

Why: Colab ships no llama-cpp-python, and the course's notebooks 03, 07, 09 and 10 also run
llama.cpp's own tools (llama-server, llama-bench, ...), which no wheel contains. So the
[colab] extra leaves llama-cpp-python out, and the first thing that needs llama.cpp (a
llama.cpp model or server through the session, a native tool through tools.py, or
`import llama_cpp`, which 04-06 do themselves) calls ensure_llama_cpp(). Notebooks that
never use llama.cpp (00, 01, 02, 99) never wait for it. It takes the first of:

1. the local cache (this runtime provisioned it before);
2. Google Drive, when mounted: `MyDrive/llmops-llama-cpp/<name>.tar`;
3. the course's release asset for the pinned version (LLMOPS_LLAMA_RELEASE_URL, default the
   GitHub release RELEASE_TAG), downloaded with a progress bar and checked against its
   `.sha256`;
4. the build script (data/build_llama_tools.sh, as `make setup` runs it locally), visibly:
   its estimate, a progress line per 10 %, only this GPU's architecture; kept in Drive when
   mounted.

An archive that is truncated, corrupt or holds another build is set aside (renamed, never
deleted) and the next source is tried. Every build here is portable (the x86-64-v3 baseline,
never -march=native: Colab's CPUs differ), and its name holds the version, the backend, the
CUDA major version and that baseline, not the Python version (the wheel is py3-none). The
archive is unpacked onto local disk (the tools do not run from the Drive mount), and the
binding is installed from it into the running kernel, so `import llama_cpp` works at once.

Why not upstream's CUDA wheel index (abetlen.github.io/llama-cpp-python/whl/cu12x) as the
fallback on a GPU runtime when the course's release asset is missing: it has the binding
only, none of the tools, so 03, 07, 09 and 10 would still need the build; its CPU code is
compiled with the index's own flags (GGML_NATIVE is not turned off there, so the CPU part
carries the build runner's instruction set), not the baseline every Colab CPU has; and a
0.3.36 index entry could not be verified from here. The course's own release, built by the
same script, gives both, checked; the source build stays the one honest last resort.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from ..core import hardware, links, progress, results
from ..core.hardware import Hardware
from . import tools
from .provision import cache_dir

# The pin of requirements.txt (tests/test_colab_install.py checks that they agree).
LLAMA_CPP_VERSION = "0.3.36"
PORTABLE = "x86-64-v3"  # the CPU baseline of every archive (see build_llama_tools.sh)
RELEASE_TAG = f"llama-cpp-{LLAMA_CPP_VERSION}"
RELEASE_URL_ENV = "LLMOPS_LLAMA_RELEASE_URL"
CONTENT_ENV = "LLMOPS_COLAB_CONTENT"  # Colab's content folder; Drive mounts at drive/ in it
DRIVE_FOLDER = "llmops-llama-cpp"
# Release assets: T4 (7.5), A100 (8.0), L4 (8.9), H100 (9.0) natively, PTX for newer GPUs.
RELEASE_CUDA_ARCHITECTURES = "75-real;80-real;89-real;90-real;90-virtual"
MOUNT_LINE = "from google.colab import drive; drive.mount('/content/drive')"
TAIL_LINES = 40


@dataclass(frozen=True)
class Variant:
    """Which llama.cpp build a runtime needs: an archive of another variant never serves it."""

    backend: str  # "cpu" or "cuda"
    cuda_major: int | None = None  # the CUDA toolkit's (libcudart.so.<major>)
    baseline: str = PORTABLE

    @property
    def key(self) -> str:
        """The build's cache folder name, as build_llama_tools.sh names it."""
        return f"{LLAMA_CPP_VERSION}-{self.backend}{self.cuda_major or ''}-{self.baseline}"

    @property
    def name(self) -> str:
        """The archive's name without .tar: in Drive and among the release assets."""
        return f"llama-cpp-{self.key}"


class BadArchive(Exception):
    """An archive that cannot serve this runtime: unreadable, truncated, or another build."""


def cuda_major() -> int:
    """The major version of the CUDA toolkit the build links (nvcc's, as the script reads it;
    else torch's, which is the same on Colab)."""
    nvcc = shutil.which("nvcc")
    if nvcc:
        found = re.search(
            r"release (\d+)\.", subprocess.check_output([nvcc, "--version"], text=True)
        )
        if found:
            return int(found[1])
    import torch

    if not torch.version.cuda:
        raise RuntimeError("No CUDA toolkit here: neither nvcc on PATH nor a CUDA build of torch.")
    return int(torch.version.cuda.split(".")[0])


def wanted(hw: Hardware) -> Variant:
    return Variant("cuda", cuda_major()) if hw.has_gpu else Variant("cpu")


def content_dir() -> Path:
    return Path(os.environ.get(CONTENT_ENV, "/content"))


def drive_dir() -> Path | None:
    """The course's folder in Drive, or None when Drive is not mounted."""
    mine = content_dir() / "drive" / "MyDrive"
    return mine / DRIVE_FOLDER if mine.is_dir() else None


def release_url() -> str:
    """The base URL of the release assets `<name>.tar` and `<name>.tar.sha256`."""
    default = f"https://github.com/{links.GITHUB_SLUG}/releases/download/{RELEASE_TAG}"
    return os.environ.get(RELEASE_URL_ENV) or default


def local_dir(variant: Variant) -> Path:
    """The local tools cache that tools.py and the build script use (same key, same layout)."""
    return tools.builds_dir() / variant.key


def find_wheel(root: Path) -> Path | None:
    wheels = sorted((root / "wheel").glob(f"llama_cpp_python-{LLAMA_CPP_VERSION}-*.whl"))
    return wheels[-1] if wheels else None


def complete(root: Path) -> bool:
    """A finished build: manifest, wheel and every tool (the script's own test)."""
    return (
        (root / "tools.json").is_file()
        and find_wheel(root) is not None
        and all(os.access(root / "bin" / tool, os.X_OK) for tool in tools.TOOLS)
    )


def covers(architectures: str | None, cc: tuple[int, int]) -> bool:
    """Whether CUDA code for CMake's `architectures` ("75", "89-real;90-virtual") runs on a GPU
    of compute capability `cc`: device code within its major version, PTX on anything newer."""
    for arch in (architectures or "").split(";"):
        found = re.fullmatch(r"(\d+)(\d)(?:-(real|virtual))?", arch.strip())
        if not found:
            continue
        built, kind = (int(found[1]), int(found[2])), found[3]
        if kind != "real" and built <= cc:
            return True
        if kind != "virtual" and built[0] == cc[0] and built[1] <= cc[1]:
            return True
    return False


def unusable(root: Path, variant: Variant | None, cc: tuple[int, int] | None) -> str | None:
    """Why the build in `root` cannot serve `variant` on a GPU of compute capability `cc`
    (None: it can; without a variant only completeness is checked)."""
    if not complete(root):
        return "tools.json, the wheel or a tool is missing"
    if variant is None:
        return None
    info = json.loads((root / "tools.json").read_text())
    held = Variant(info.get("backend"), info.get("cuda_major"), info.get("baseline"))
    if held != variant:
        return f"it holds the build {held.key}, not {variant.key}"
    archs = info.get("cuda_architectures")
    if variant.backend == "cuda" and cc is not None and not covers(archs, cc):
        return f"its CUDA code ({archs}) does not run on this GPU (compute {cc[0]}.{cc[1]})"
    return None


def store(root: Path, archive: Path) -> Path:
    """Keep the build `root` as one .tar at `archive` (written whole, then renamed)."""
    with results.replacing(archive) as part, tarfile.open(part, "w") as tar:
        for name in ("tools.json", "wheel", "bin"):
            tar.add(root / name, arcname=f"{root.name}/{name}")
    return archive


def restore(
    archive: Path, root: Path, variant: Variant | None = None, cc: tuple[int, int] | None = None
) -> Path:
    """Unpack `archive` into the local tools cache at `root`, its manifest pointing there.

    BadArchive (and `root` untouched) when the archive is unreadable or truncated, lacks a
    member, or holds a build that cannot serve `variant` on a GPU of compute capability `cc`.
    """
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        try:
            with tarfile.open(archive) as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, filter="data")
                else:  # Python before 3.11.4
                    tar.extractall(tmp)  # noqa: S202 (our own archive)
        except (tarfile.TarError, EOFError) as err:
            raise BadArchive(f"unreadable: {type(err).__name__}: {err}") from err
        folders = list(Path(tmp).iterdir())
        if len(folders) != 1:
            raise BadArchive(f"{len(folders)} folders at its top, not one build")
        why = unusable(folders[0], variant, cc)
        if why:
            raise BadArchive(why)
        manifest = folders[0] / "tools.json"
        info = json.loads(manifest.read_text())
        info["tools"] = {tool: str(root / "bin" / tool) for tool in info["tools"]}
        manifest.write_text(json.dumps(info, indent=2))
        shutil.rmtree(root, ignore_errors=True)
        folders[0].rename(root)
    return root


def set_aside(path: Path, why: str) -> None:
    """Rename a bad archive out of the way (kept for a look, never deleted); one line."""
    aside = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        path.rename(aside)
        done = f"set aside as {aside.name}"
    except OSError as err:
        done = f"could not be set aside ({err.strerror or err})"
    print(f"{path} is unusable ({why}); {done}; trying the next source.", flush=True)


def download(url: str, dest: Path) -> Path:
    """`url` into `dest` (whole, then renamed) with a progress bar, checked against the sha256
    in `url`.sha256. OSError when either cannot be fetched; BadArchive (the file set aside)
    when the checksum differs."""
    with urllib.request.urlopen(url + ".sha256", timeout=30) as response:
        expected = response.read().decode().split()[0].lower()
    digest = hashlib.sha256()
    with results.replacing(dest) as part:
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
                size = round(int(response.headers.get("Content-Length") or 0) / 1e6)
                with progress.bar(total=size or None, desc=dest.name, unit="MB") as bar:
                    received = 0
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        bar.update(round(received / 1e6) - bar.n)
        except http.client.HTTPException as err:  # e.g. IncompleteRead: the connection dropped
            raise OSError(f"{type(err).__name__}: {err}") from err
        if digest.hexdigest() != expected:
            got = digest.hexdigest()
            set_aside(part, f"sha256 {got[:12]}..., the release says {expected[:12]}...")
            raise BadArchive("its sha256 differs from the release's")
    return dest


def build(variant: Variant, cuda_architectures: str | None = None) -> Path:
    """Run the course's build script for `variant`, echoing its estimate and progress; the
    build's folder. On failure the error carries the build's last lines."""
    env = dict(
        os.environ,
        LLAMA_CPP_VERSION=LLAMA_CPP_VERSION,
        PYTHON=sys.executable,
        LLMOPS_LLAMA_BACKEND=variant.backend,
        LLMOPS_CPU_BASELINE=variant.baseline,
        LLMOPS_CACHE=str(cache_dir()),
    )
    if cuda_architectures:
        env["LLMOPS_CUDA_ARCHITECTURES"] = cuda_architectures
    config = script_config(env)
    if config["key"] != variant.key:
        raise RuntimeError(
            f"The build script would build {config['key']}, not {variant.key} "
            "(nvcc and torch disagree on the CUDA version?)."
        )
    print(f"Compiling llama.cpp {variant.key} on this runtime ({config['estimate']}) ...")
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with subprocess.Popen(
        ["bash", str(tools.SCRIPT)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        for line in proc.stdout:
            tail.append(line.rstrip())
            print(line, end="", flush=True)
    root = local_dir(variant)
    if proc.returncode != 0 or not complete(root):
        why = f"exit {proc.returncode}" if proc.returncode else f"no complete build in {root}"
        last = "\n".join(tail)
        raise RuntimeError(f"Building llama.cpp failed ({why}); last lines:\n{last}")
    return root


def script_config(env: dict[str, str]) -> dict[str, str]:
    """The build script's --print-config for `env`: its key, estimate, CMake options."""
    out = subprocess.run(
        ["bash", str(tools.SCRIPT), "--print-config"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def keep(root: Path, archive: Path) -> None:
    """Store a finished build in Drive; a read-only or full Drive costs only the copy."""
    try:
        store(root, archive)
        print(f"Kept the build in {archive} for later runtimes.", flush=True)
    except OSError as err:
        print(f"Could not keep the build in {archive} ({err}); it stays on this runtime only.")


def try_archive(archive: Path, root: Path, variant: Variant, cc, where: str) -> bool:
    """Restore from `archive`; a bad one is set aside (False, the next source is tried)."""
    print(f"Restoring llama.cpp {variant.key} from {where} ...", flush=True)
    try:
        restore(archive, root, variant, cc)
    except BadArchive as err:
        set_aside(archive, str(err))
        return False
    return True


def provide(variant: Variant, cc: tuple[int, int] | None) -> str:
    """Put a usable build of `variant` into the local cache, from the first source that has
    one (see the module's docstring); which source it was."""
    root = local_dir(variant)
    if unusable(root, variant, cc) is None:
        return "the local cache"
    misses = ["local cache: none"]
    drive = drive_dir()
    if drive is None:
        misses.append("Drive: not mounted")
    elif not (drive / f"{variant.name}.tar").is_file():
        misses.append(f"Drive: no {variant.name}.tar")
    elif try_archive(drive / f"{variant.name}.tar", root, variant, cc, "Drive"):
        return f"Drive ({drive / f'{variant.name}.tar'})"
    else:
        misses.append("Drive: set aside")
    url = f"{release_url()}/{variant.name}.tar"
    downloaded = tools.builds_dir() / "downloads" / f"{variant.name}.tar"
    try:
        download(url, downloaded)
        if try_archive(downloaded, root, variant, cc, "the release asset"):
            downloaded.unlink()
            return f"the release asset {url}"
        misses.append("release: set aside")
    except BadArchive:
        misses.append("release: checksum differs")
    except OSError as err:
        print(f"No release asset at {url} ({err}).", flush=True)
        misses.append("release: not available")
    print(
        f"No prebuilt llama.cpp {variant.key} ({'; '.join(misses)}): compiling it, the last resort."
    )
    archs = f"{cc[0]}{cc[1]}" if variant.backend == "cuda" and cc else None
    build(variant, archs)
    if drive is not None:
        keep(root, drive / f"{variant.name}.tar")
    else:
        print(
            f"Drive is not mounted, so this build goes with the runtime. To keep it: {MOUNT_LINE}"
        )
    return "a build on this runtime"


def install(root: Path) -> Path:
    """Install the build's wheel into this kernel's environment, importable at once."""
    wheel = find_wheel(root)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall"]
    subprocess.run([*pip, str(wheel)], check=True)
    importlib.invalidate_caches()  # the import system's cached view of site-packages
    return wheel


def ensure_llama_cpp(hw: Hardware | None = None) -> str | None:
    """On Colab: make the pinned llama-cpp-python importable and llama.cpp's tools runnable for
    this runtime's backend, once; say where they came from. Elsewhere: nothing (a checkout's
    `make setup` provides them; tools.py names the step when they are missing)."""
    if hardware.runtime() != "colab":
        return None
    hw = hw or hardware.detect(check_token=False)
    variant, cc = wanted(hw), hw.compute_capability
    root = local_dir(variant)
    done = f"llama.cpp {LLAMA_CPP_VERSION} ({variant.key}): tools in {root / 'bin'}"
    if tools.installed_key() == variant.key and unusable(root, variant, cc) is None:
        return done
    source = provide(variant, cc)
    install(root)
    print(f"{done}, binding installed, from {source}", flush=True)
    return f"{done}, from {source}"


class ProvisionOnImport:
    """A meta-path finder: on Colab `import llama_cpp` (04-06 import it themselves) provisions
    llama.cpp first, then lets the regular finders import it."""

    def find_spec(self, name: str, path=None, target=None):
        if name == "llama_cpp":
            ensure_llama_cpp()
        return None


def install_import_hook() -> None:
    """Called by setup() on Colab; once per process."""
    if not any(isinstance(finder, ProvisionOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, ProvisionOnImport())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m llmops_lib.planning.colab",
        description="Names and archives of the course's portable llama.cpp builds.",
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--asset-name", choices=("cpu", "cuda"), help="print the archive's name")
    group.add_argument("--release-tag", action="store_true", help="print the release's tag")
    group.add_argument(
        "--pack",
        nargs=2,
        metavar=("BACKEND", "OUTDIR"),
        help="write OUTDIR/<name>.tar and <name>.tar.sha256 from the local portable build",
    )
    args = parser.parse_args(argv)
    if args.release_tag:
        print(RELEASE_TAG)
        return
    backend = args.asset_name or args.pack[0]
    if backend not in ("cpu", "cuda"):
        parser.error(f"--pack {backend}: the backend is cpu or cuda")
    variant = Variant("cuda", cuda_major()) if backend == "cuda" else Variant(backend)
    if args.asset_name:
        print(variant.name)
        return
    root = local_dir(variant)
    why = unusable(root, variant, None)
    if why:
        parser.error(f"{root}: {why}; build it first (scripts/build_release_assets.sh)")
    archive = store(root, Path(args.pack[1]) / f"{variant.name}.tar")
    with open(archive, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    Path(f"{archive}.sha256").write_text(f"{digest}  {archive.name}\n")  # sha256sum's format
    print(archive)


if __name__ == "__main__":
    main()
