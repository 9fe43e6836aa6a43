"""Shared fixtures: the real tiny model (loaded once) and a guard against network use."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture(scope="session")
def session():
    import llmops_lib

    return llmops_lib.setup(profile="tiny", quiet=True)


@pytest.fixture(scope="session")
def tiny_chat(session):
    """The tiny profile's chat model (Gemma 3 270M Q4_K_M) on llama.cpp, loaded once."""
    model = session.chat_model(n_ctx=2048)
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
