"""Shared fixtures (the real tiny model, loaded once; a guard against network use) and the
order tests run in: unit tests first, then tests marked `model`, then notebooks.

Unit tests run on the fakes of tests/fakes.py in milliseconds, so a logic error shows in
seconds; tests that load model files or start a server carry `@pytest.mark.model`
(`pytest -m "not model"` runs only the fast ones).
"""

from __future__ import annotations

import socket

import pytest


@pytest.hookimpl(trylast=True)  # after pytest's own reordering by fixture scope
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Unit tests, then `model` tests, then notebook cells; stable within each group."""

    def group(item: pytest.Item) -> int:
        if item.path.suffix == ".ipynb":
            return 2
        return 1 if item.get_closest_marker("model") else 0

    items.sort(key=group)


@pytest.fixture(scope="session")
def session():
    import llmops_lib

    return llmops_lib.setup(profile="tiny", quiet=True)


@pytest.fixture(scope="session")
def tiny_chat(session):
    """The tiny profile's chat model (SmolLM2 135M Instruct Q4_1) on llama.cpp, loaded once."""
    model = session.model(n_ctx=2048)
    yield model
    model.close()


@pytest.fixture
def no_network(monkeypatch):
    """Fail any attempt to open a connection that is not to this machine."""
    real_connect = socket.socket.connect

    def guarded(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and (host.startswith("127.") or host in {"localhost", "::1"}):
            return real_connect(sock, address)
        raise AssertionError(f"network access attempted: {address!r}")

    monkeypatch.setattr(socket.socket, "connect", guarded)
