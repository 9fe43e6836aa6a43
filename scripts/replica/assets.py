"""The course's llama.cpp release asset, as a runtime downloads it: built with the release
recipe (scripts/build_release_assets.sh cpu DIR), kept under ~/.cache/llmops keyed by what it
is built from, and served over HTTP on 127.0.0.1 for the replica's runtimes.

Why a server: on Colab `setup()` downloads the asset from the course's GitHub release
(LLMOPS_LLAMA_RELEASE_URL there); the replica points that URL here, so the download, the
checksum and the restore all run as they would on Colab, and the server's log shows which
notebooks fetched it (a notebook that needs no llama.cpp should not).
"""

from __future__ import annotations

import hashlib
import platform
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from llmops_lib.planning.provision import cache_dir

from .image import run

SCRIPT = "scripts/build_release_assets.sh"
# What the asset is built from: a change to any of these builds it again.
INPUTS = (SCRIPT, "llmops_lib/data/build_llama_tools.sh", "llmops_lib/planning/colab.py")


def archives(folder: Path) -> list[Path]:
    """The archives in `folder` whose .sha256 file names their own checksum."""
    good = []
    for tar in sorted(folder.glob("*.tar")):
        check = tar.with_name(tar.name + ".sha256")
        if check.is_file() and check.read_text().split()[:1] == [sha256(tar)]:
            good.append(tar)
    return good


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(root: Path, python_version: str) -> str:
    """The asset's inputs: the recipe's files, the pinned llama-cpp-python, Python, machine."""
    digest = hashlib.sha256()
    for name in INPUTS:
        path = root / name
        digest.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b""))
    pin = [ln for ln in (root / "requirements.txt").read_text().splitlines() if "llama-cpp" in ln]
    digest.update(repr((pin, python_version.rsplit(".", 1)[0], platform.machine())).encode())
    return digest.hexdigest()[:16]


def provide(
    root: Path,
    given: Path | None,
    cache: Path,
    build_env: Callable[[], dict[str, str]],
    python_version: str,
    log: Path,
) -> tuple[Path | None, str]:
    """(the folder of the CPU asset to serve or None, how it came): `given`, else the cache,
    else built now with the release recipe of the checkout at `root` in the environment
    `build_env()` makes, else none (the recipe is not in this checkout: a runtime then gets
    what setup() does without it)."""
    if given is not None:
        if not archives(given):
            raise SystemExit(f"colab_replica: --assets {given} holds no .tar with its .sha256")
        return given, f"given: {given}"
    if not (root / SCRIPT).is_file():
        return None, f"none: {SCRIPT} is not in this checkout"
    folder = cache / cache_key(root, python_version)
    if archives(folder):
        return folder, f"cached: {folder}"
    tmp = folder.with_name(folder.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    began = time.monotonic()
    run(["bash", str(root / SCRIPT), "cpu", str(tmp)], build_env(), log, cwd=root)
    if not archives(tmp):
        raise RuntimeError(f"{SCRIPT} cpu {tmp} wrote no .tar with a matching .sha256")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder, f"built with {SCRIPT} in {time.monotonic() - began:.0f} s: {folder}"


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:
        self.server.log.append(format % args)


class Server(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 that keeps its request log."""

    log: list[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def serve(folder: Path) -> Iterator[Server]:
    """Serve `folder` on a free port of 127.0.0.1 from a thread; stopped whatever happens."""
    server = Server(("127.0.0.1", 0), partial(_Handler, directory=str(folder)))
    server.log = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def default_cache() -> Path:
    """~/.cache/llmops/release-assets (or under LLMOPS_CACHE): outside every runtime."""
    return cache_dir() / "release-assets"
