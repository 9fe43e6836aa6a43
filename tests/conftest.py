"""Shared fixtures (the real tiny model, loaded once; a guard against network use) and the
order tests run in: unit tests first, then notebooks, longest first, then tests marked `model`.

Unit tests run on the fakes of tests/fakes.py in milliseconds, so a logic error shows in
seconds; tests that load model files or start a server carry `@pytest.mark.model`
(`pytest -m "not model"` runs only the fast ones).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Iterator

import pytest

from llmops_lib.core import course, hardware


def pytest_configure(config: pytest.Config) -> None:
    """Each `make test` worker, and every notebook kernel it starts, gets its share of cores.

    Two workers that each use every core make both slow many times over (threads that share
    a core wait for each other at every step), so a worker's llama.cpp threads follow
    LLMOPS_CORES and torch, OpenMP and the tokenizers follow the thread variables; a notebook
    kernel inherits them. One worker (plain `pytest`) keeps the whole machine.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers < 2:
        return
    share = str(max(1, hardware.machine_cores() // workers))
    threads = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS")
    for variable in (hardware.CORES_VARIABLE, *threads):
        os.environ.setdefault(variable, share)
    if "torch" in sys.modules:  # imported before this hook: it has read the variables already
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.hookimpl(trylast=True)  # after pytest's own reordering by fixture scope
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Unit tests, then notebooks (longest stored run first), then `model` tests.

    `make test` runs two workers, each taking a whole file at a time (`--dist loadscope`,
    in this order): the notebooks are the longest files (up to two minutes), so starting them
    longest first and ending on the many short `model` files keeps both workers busy to the
    end. A notebook's cells keep their order: they run in sequence, in one kernel.
    """
    notebooks = {item.path for item in items if item.path.suffix == ".ipynb"}
    seconds = {path: course.stored_wall_s(path) or 0.0 for path in notebooks}

    def key(item: pytest.Item) -> tuple[int, float]:
        if item.path.suffix == ".ipynb":
            return 1, -seconds[item.path]
        return (2 if item.get_closest_marker("model") else 0), 0.0

    items.sort(key=key)


@pytest.fixture(scope="session")
def session():
    import llmops_lib

    return llmops_lib.setup(profile="tiny", quiet=True)


@pytest.fixture(scope="session")
def one_thread() -> dict[str, int]:
    """llama.cpp thread settings for the models tests load: one thread, prefill included.

    Tests check behaviour, not speed. With two threads llama.cpp meets its sibling at a
    barrier after every operation; on a machine shared with other jobs the OS keeps
    descheduling one of them and the other waits, so the same tests ran several times
    slower than on one thread. Benchmarks and notebooks keep the library's defaults.
    """
    return {"n_threads": 1, "n_threads_batch": 1}


@pytest.fixture(scope="session")
def tiny_chat(session, one_thread):
    """The tiny profile's chat model (SmolLM2 135M Instruct Q4_1) on llama.cpp, loaded once."""
    model = session.model(n_ctx=2048, **one_thread)
    yield model
    model.close()


@pytest.fixture(scope="session")
def tiny_hf(session):
    """The same SmolLM2 135M Instruct on transformers in fp32 (the tiny `classifier`), loaded once.

    Loading it takes seconds and a gigabyte; tests that only call it share this one.
    """
    with session.model("classifier", "fp32") as model:
        yield model


@pytest.fixture(scope="session")
def tiny_served(session, one_thread):
    """The same GGUF on a llama-server on 127.0.0.1, loaded as the `served` profile's chat
    model (engines.served) through LLMOPS_ENDPOINT, as a user of that profile would."""
    import llmops_lib
    from llmops_lib.engines.endpoint import ENDPOINT_ENV

    with session.server("llama-server", n_ctx=2048, **one_thread) as server:
        with pytest.MonkeyPatch.context() as patch:  # for the load only: other tests start
            patch.setenv(ENDPOINT_ENV, server.base_url)  # their own servers
            model = llmops_lib.setup(profile="served", quiet=True).model()
        with model:
            yield model


@contextlib.contextmanager
def network_blocked() -> Iterator[None]:
    """Fail any attempt to open a connection that is not to this machine."""
    real_connect = socket.socket.connect

    def guarded(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and (host.startswith("127.") or host in {"localhost", "::1"}):
            return real_connect(sock, address)
        raise AssertionError(f"network access attempted: {address!r}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", guarded)
        yield


@pytest.fixture
def no_network():
    """network_blocked() for one test."""
    with network_blocked():
        yield


@pytest.fixture(scope="module")
def no_network_module():
    """network_blocked() from the first test of a module that asks for it to the module's end
    (for module fixtures, such as a model trained once, that must work offline)."""
    with network_blocked():
        yield
