"""A model server as a child process on 127.0.0.1: start, wait until ready, always stop.

Both local servers of the course (llama-cpp-python's and llama.cpp's own llama-server)
share this life cycle; `servers.py` says how each one is started.
"""

from __future__ import annotations

import atexit
import ctypes
import numbers
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import openai
import psutil

from ..core.errors import InputError, positive, whole
from ..core.hardware import default_threads, threads
from ..planning.gguf_header import check_gguf
from ..planning.tools import shown_command

if TYPE_CHECKING:
    from .endpoint import Endpoint

HOST = "127.0.0.1"
WORKDIR_PREFIX = "llmops-server-"  # + the starting process's pid: whose server it was
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with(parent: int) -> Callable[[], None] | None:
    """A preexec_fn that ties the child's life to this process (Linux), or None elsewhere.

    The kernel sends the child SIGTERM when its parent dies, however it dies (kill -9,
    os._exit, a crashed kernel), so no server outlives the notebook that started it. The
    signal follows the THREAD that forked the child, not the process, so children are
    forked by `_SPAWNER`'s one thread, which lives as long as the process.
    """
    if not sys.platform.startswith("linux"):
        return None

    def tie() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return tie


# The one thread that forks servers. A server started from a short-lived thread (a thread
# pool, anyio.to_thread, a web app's handler) was sent SIGTERM when that thread ended; this
# thread ends only with the process (an idle pool worker waits for work until shutdown).
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmops-spawner")


def spawn(command: list[str], **popen: Any) -> subprocess.Popen[bytes]:
    """subprocess.Popen(command, **popen) forked by the spawner thread, tied to this process."""
    popen["preexec_fn"] = _die_with(os.getpid())
    return _SPAWNER.submit(subprocess.Popen, command, **popen).result()


def check_port(port: object) -> int:
    """`port` when it is a TCP port number (1-65535), else InputError naming the range."""
    if isinstance(port, bool) or not isinstance(port, numbers.Integral) or not 0 < port < 65536:
        raise InputError(f"port={port!r}: needs a TCP port, a whole number in 1-65535.")
    return int(port)


def remove_orphaned_workdirs() -> list[Path]:
    """Delete the temporary folders of servers whose starting process is gone."""
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"):
        owner = folder.name.removeprefix(WORKDIR_PREFIX).split("-")[0]
        if owner.isdigit() and not psutil.pid_exists(int(owner)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def free_port(host: str = HOST) -> int:
    """A TCP port that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(port: int, host: str = HOST) -> bool:
    """True when nothing listens on host:port (a stopped server must leave it so)."""
    port = check_port(port)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) != 0


def python_server_threads() -> int:
    """llama.cpp threads for a server whose HTTP side is Python in the model's own process
    (llama_cpp.server, the course's service): the idle physical cores but one.

    Its event loop and per-token Python work need a core of their own. With every core
    decoding, notebook 03 measured llama_cpp.server at under half the speed of the same
    engine in process, and its throughput halved at 8 users; with one core left free the
    server cost nothing measurable. llama-server is C++ throughout and takes every idle core.
    """
    return max(1, default_threads() - 1)


class ServerProcess:
    """A model server as a child process on 127.0.0.1, used as a context manager.

    The process is stopped on exit from the `with` block, also when the block raises, and at
    interpreter exit as a last resort (a notebook kernel that is shut down mid-lesson).
    A subclass says how to start it (`command`) and which path answers 200 once the model
    is loaded (`ready_path`).
    """

    name: str  # the program, as error messages name it
    ready_path: str  # answers 200 once the model is loaded
    threads_default: Callable[[], int] = staticmethod(default_threads)  # when n_threads is None

    def __init__(
        self,
        model_path: str | Path,
        n_ctx: int,
        n_threads: int | None = None,
        port: int | None = None,
        startup_timeout_s: float = 120.0,
        n_threads_batch: int | None = None,
    ) -> None:
        self.model_path = check_gguf(model_path)
        self.n_ctx = whole("n_ctx", n_ctx)
        self.n_threads = threads(n_threads, self.threads_default)
        # Prompts and batched decoding get the same threads (llama-server's own default).
        self.n_threads_batch = whole("n_threads_batch", n_threads_batch or self.n_threads)
        self._auto_port = port is None
        self.port = free_port() if port is None else check_port(port)
        self.startup_timeout_s = positive("startup_timeout_s", startup_timeout_s)
        self.process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI-compatible API root, for openai.OpenAI(base_url=...) or connect()."""
        return self.url + "/v1"

    @property
    def log_path(self) -> Path | None:
        return self._workdir / "server.log" if self._workdir else None

    def command(self) -> list[str]:
        """The exact command line, so it can be run by hand in a terminal too."""
        raise NotImplementedError

    def shown_command(self) -> str:
        """command() as a reader types it: `python` for this interpreter and file names
        instead of this machine's folders (what a stored notebook output may show)."""
        return shown_command("python" if arg == sys.executable else arg for arg in self.command())

    def start(self) -> ServerProcess:
        """Start the process and wait (bounded) until `ready_path` answers."""
        if self.process is not None:
            raise RuntimeError(f"{self.name} is already running at {self.url}.")
        if self._auto_port:
            self.port = free_port()
        elif not port_is_free(self.port):
            raise OSError(f"Port {self.port} on {HOST} is in use; pass port=None for a free one.")
        remove_orphaned_workdirs()
        atexit.register(self.stop)
        try:
            prefix = f"{WORKDIR_PREFIX}{os.getpid()}-"
            self._workdir = Path(tempfile.mkdtemp(prefix=prefix))
            with self.log_path.open("wb") as log:
                self.process = spawn(
                    self.command(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    # Its own session: Jupyter's "Interrupt kernel" (SIGINT to the kernel's
                    # process group) stops the cell, not the server.
                    start_new_session=True,
                )
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with code {self.process.returncode} before it "
                    f"answered on {self.url}. Its log ends with:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet, or 503 while the model loads
            time.sleep(0.2)
        raise TimeoutError(
            f"{self.name} did not answer on {self.url}{self.ready_path} within "
            f"{self.startup_timeout_s:.0f} s. Its log ends with:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 25) -> str:
        """The end of the server's own log (stdout and stderr)."""
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def endpoint(self, timeout_s: float = 10.0) -> Endpoint:
        """A checked client of this running server for the chat contract (endpoint.connect),
        the server kept on it as `.server`."""
        from .endpoint import connect

        return connect(self.base_url, timeout_s=timeout_s, server=self)

    def client(self, **kwargs: Any) -> openai.OpenAI:
        """An openai.OpenAI client for this server (no key needed on 127.0.0.1)."""
        kwargs.setdefault("timeout", 120)
        kwargs.setdefault("max_retries", 0)  # a failure shows at once, not after retries
        return openai.OpenAI(base_url=self.base_url, api_key="not-needed", **kwargs)

    def stop(self) -> None:
        """Terminate the process (kill it if it does not exit in 10 s) and remove temp files."""
        atexit.unregister(self.stop)
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=10)
            self.process = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
