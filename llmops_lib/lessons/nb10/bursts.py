"""Notebook 10's crowd at the service's door: many requests released at once, to see what
a bounded queue does with them (answered, told to come back with 429, none left hanging)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pandas as pd

from ...core.errors import EndpointError, InputError, check_columns, positive, whole
from ..loadtest import PROMPTS, THREAD_PREFIX


def burst(
    url: str,
    clients: int,
    body: dict[str, Any] | None = None,
    path: str = "/generate",
    timeout_s: float = 120.0,
) -> pd.DataFrame:
    """`clients` POSTs released at the same instant; one row each: HTTP status (0: no
    answer within `timeout_s`), seconds, Retry-After. What a bounded queue does with a
    crowd: some answered, the rest told at once to come back (429), none left hanging."""
    import httpx

    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise InputError(f"url={url!r}: needs the service's http:// address.")
    whole("clients", clients)
    positive("timeout_s", timeout_s)
    body = {"prompt": PROMPTS[0], "max_tokens": 16} if body is None else body
    if not isinstance(body, dict):
        raise InputError(f"body: needs a JSON object (a dict), got {type(body).__name__}.")
    if not isinstance(path, str) or not path.startswith("/"):
        raise InputError(f"path={path!r}: needs a path such as /generate.")
    start = threading.Barrier(clients)

    def one(client: httpx.Client, i: int) -> dict[str, Any]:
        start.wait(timeout=timeout_s)
        t0 = time.perf_counter()
        try:
            response = client.post(path, json=body)
        except httpx.ConnectError as err:  # nothing listens: a wrong URL, not a busy service
            raise EndpointError(f"Cannot connect to {url} ({err}); is it running?", url) from None
        except httpx.TransportError:  # a timeout, or the connection dropped: no answer
            status, retry = 0, "nan"
        else:
            status, retry = response.status_code, response.headers.get("Retry-After", "nan")
        return {
            "client": i,
            "status": status,
            "seconds": time.perf_counter() - t0,
            "retry_after_s": float(retry),
        }

    limits = httpx.Limits(max_connections=clients)
    with (
        httpx.Client(base_url=url, timeout=timeout_s, limits=limits) as client,
        ThreadPoolExecutor(max_workers=clients, thread_name_prefix=THREAD_PREFIX) as pool,
    ):
        rows = list(pool.map(lambda i: one(client, i), range(clients)))
    return pd.DataFrame(rows).set_index("client")


def burst_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per HTTP status: how many, and their median and worst time to an answer."""
    check_columns("burst_summary()", frame, ["status", "seconds"])
    return frame.groupby("status")["seconds"].agg(requests="count", p50_s="median", max_s="max")
