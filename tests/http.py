"""Run an ASGI app on a real uvicorn server, in a thread, on a free loopback port (HTTPS when given
a certificate and key, e.g. from :mod:`tests.tls`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from broker.devstack.process import free_port
from broker.devstack.stack import server_config


@contextmanager
def running(
    app: Any, port: int | None = None, *, ssl_certfile: str | Path | None = None, ssl_keyfile: str | Path | None = None
) -> Iterator[str]:
    port = port or free_port()
    with serving(server_config(app, port, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)):
        yield f"{'https' if ssl_certfile else 'http'}://127.0.0.1:{port}"


@contextmanager
def serving(config: uvicorn.Config) -> Iterator[None]:
    """Serve ``config`` in a thread until the block ends."""
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(10)


def wait_ready(url: str, proc: Any, timeout: float = 30, describe: Any = None) -> Any:
    """Poll ``url`` until it answers 200 (return that response), failing as soon as the server
    process ``proc`` exits; ``describe()`` adds context (e.g. the server's log) to a failure."""
    import httpx

    def why() -> str:
        return f":\n{describe()}" if describe is not None else ""

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}{why()}")
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == 200:
                return response
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never became ready{why()}")
