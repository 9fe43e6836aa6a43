"""A server child process: tied to the process that started it, not to the thread, and its
numbers (ports, timeouts) checked before anything starts."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest
from test_reliability import _gone

from llmops_lib.commands import service
from llmops_lib.core.errors import InputError
from llmops_lib.engines import servers
from llmops_lib.engines.endpoint import Endpoint, connect
from llmops_lib.engines.process import port_is_free


@pytest.fixture(scope="module")
def tiny_path(session):
    return session.model_path("chat")


@pytest.mark.parametrize("port", [0, -1, 65536, 70_000, True, 80.0, "8000"])
def test_a_port_out_of_range_or_of_the_wrong_type_is_named(tiny_path, port):
    with pytest.raises(InputError, match="port=.*1-65535"):
        servers.LocalServer(tiny_path, port=port)
    with pytest.raises(InputError, match="port=.*1-65535"):
        port_is_free(port)


@pytest.mark.parametrize("timeout", [0, -5, float("nan"), float("inf"), "60", None])
def test_a_startup_timeout_that_is_not_a_positive_number_is_named(tiny_path, timeout):
    with pytest.raises(InputError, match="startup_timeout_s="):
        servers.LlamaServer(tiny_path, startup_timeout_s=timeout)


@pytest.mark.model
def test_a_server_started_from_a_short_lived_thread_outlives_the_thread(session):
    """The parent-death signal follows the thread that forked the child: a server started
    from a thread pool, anyio.to_thread or a web handler got SIGTERM when that thread ended."""
    started: list[servers.LocalServer] = []
    worker = threading.Thread(
        target=lambda: started.append(session.server("llama_cpp.server", n_ctx=256).start())
    )
    worker.start()
    worker.join()  # the thread that started it is gone
    server = started[0]
    try:
        time.sleep(1.0)  # long enough for a SIGTERM to land and uvicorn to exit
        assert server.process.poll() is None, server.log_tail()
        assert server.client().models.list().data  # still answering
    finally:
        server.stop()
    assert port_is_free(server.port)


# A parent that starts a server from a thread that then ends, says where it is, and waits.
PARENT = textwrap.dedent(
    """
    import json, threading, time
    import llmops_lib
    session = llmops_lib.setup(profile="tiny", quiet=True)
    started = []
    worker = threading.Thread(
        target=lambda: started.append(session.server("llama_cpp.server", n_ctx=256).start())
    )
    worker.start()
    worker.join()
    print(json.dumps({"pid": started[0].process.pid, "port": started[0].port}), flush=True)
    time.sleep(600)
    """
)


@pytest.mark.model
def test_a_server_started_from_a_thread_still_dies_with_its_parent():
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        line = parent.stdout.readline()
        assert line, "the parent did not start its server"
        child = json.loads(line)
        assert psutil.pid_exists(child["pid"])
        parent.kill()  # kill -9: no atexit, no finally
        parent.wait(timeout=15)
        assert _gone(child["pid"]), "the server outlived the process that started it"
    finally:
        parent.kill()
        for p in psutil.process_iter():
            if line and p.pid == json.loads(line)["pid"]:
                p.kill()


# Arguments that were passed on unchecked: to a command line (a string split letter by
# letter, a layer count of 'x'), or into a raw AttributeError/ValueError deep in a client.
BAD_ARGUMENTS = {
    "extra_args as one string": (
        lambda p: servers.LlamaServer(p, extra_args="--metrics"),
        "extra_args",
    ),
    "extra_args not strings": (lambda p: servers.LlamaServer(p, extra_args=(1,)), "extra_args"),
    "n_gpu_layers text": (lambda p: servers.LlamaServer(p, n_gpu_layers="x"), "n_gpu_layers"),
    "n_gpu_layers -5": (lambda p: servers.LocalServer(p, n_gpu_layers=-5), "n_gpu_layers"),
    "endpoint url a number": (lambda p: Endpoint(5), "base_url"),
    "endpoint url without scheme": (lambda p: Endpoint("localhost:8000/v1"), "base_url"),
    "endpoint timeout negative": (
        lambda p: Endpoint("http://127.0.0.1:9/v1", timeout_s=-1),
        "timeout_s",
    ),
    "connect timeout NaN": (
        lambda p: connect("http://127.0.0.1:9/v1", timeout_s=math.nan),
        "timeout_s",
    ),
    "chat timeout negative": (
        lambda p: Endpoint("http://127.0.0.1:9/v1", model="m").chat(
            [{"role": "user", "content": "hi"}], timeout_s=-1
        ),
        "timeout_s",
    ),
    "queue size True": (lambda p: service.Queue(True), "queue_size"),
    "queue size fractional": (lambda p: service.create_app(lambda: None, "m", 1.5), "queue_size"),
    "service port out of range": (
        lambda p: service.server(service.create_app(lambda: None, "m"), "127.0.0.1", 70_000),
        "port",
    ),
}


@pytest.mark.parametrize("case", BAD_ARGUMENTS, ids=list(BAD_ARGUMENTS))
def test_bad_arguments_are_named_before_anything_starts(tiny_path, case):
    call, named = BAD_ARGUMENTS[case]
    with pytest.raises(InputError, match=named):
        call(tiny_path)
