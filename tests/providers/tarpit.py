"""A tarpit on loopback: an upstream that accepts the connection and then never answers
(``hang``), or answers one byte at a time, status line and headers included, so that no read
ever waits long enough for a per-read time-out to fire (``drip``). Paths listed in
``documents`` are answered at once with that JSON, so a discovery document can point at the
tarpit's stalled endpoints. Used by the provider tests and ``bench/outage_upstream.py``::

    with Tarpit("drip").serve() as pit:      # http://127.0.0.1:<port>
        pit.documents["/.well-known/openid-configuration"] = {...}

With ``tls`` (a server SSL context) the handshake completes and the stall happens inside TLS.
Without it an https client is stalled in its handshake (the tarpit never answers the hello).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, Literal

import pytest

from providers.base import UpstreamUnavailable

Mode = Literal["hang", "drip"]
DRIP = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Padding: " + b"." * 100_000


class Tarpit:
    def __init__(self, mode: Mode, *, tls: ssl.SSLContext | None = None, interval: float = 0.5) -> None:
        self.mode = mode
        self.tls = tls
        self.interval = interval  # seconds between two dripped bytes
        self.documents: dict[str, object] = {}
        self.requests: list[str] = []  # "METHOD /path" of each request that reached the tarpit
        self.base = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    @contextmanager
    def serve(self) -> Iterator[str]:
        started = threading.Event()
        thread = threading.Thread(target=lambda: asyncio.run(self._main(started)), daemon=True)
        thread.start()
        if not started.wait(10):
            raise RuntimeError("the tarpit did not start")
        try:
            yield self.base
        finally:
            if self._loop is not None and self._stop is not None:
                self._loop.call_soon_threadsafe(self._stop.set)
            thread.join(10)

    async def _main(self, started: threading.Event) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        handlers: set[asyncio.Task[None]] = set()

        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            handler = asyncio.ensure_future(self._connection(reader, writer))
            handlers.add(handler)
            await asyncio.wait([handler])  # never cancelled from outside: see _connection

        server = await asyncio.start_server(connection, "127.0.0.1", 0, ssl=self.tls)
        port = server.sockets[0].getsockname()[1]
        self.base = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"
        started.set()
        async with server:
            await self._stop.wait()
            server.close()
            if handlers:
                await asyncio.wait(handlers, timeout=5)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection until the client leaves or the tarpit stops."""
        assert self._stop is not None
        stop = asyncio.ensure_future(self._stop.wait())
        serving = asyncio.ensure_future(self._serve(reader, writer))
        try:
            await asyncio.wait([serving, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (serving, stop):
                task.cancel()
            await asyncio.gather(serving, stop, return_exceptions=True)
            writer.close()
            with suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, path, *_ = [*head.split(b"\r\n")[0].decode("latin-1").split(" "), "", ""]
            path = path.split("?")[0]
            self.requests.append(f"{method} {path}")
            if path in self.documents:
                body = json.dumps(self.documents[path]).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
            elif self.mode == "hang":  # read on until the client gives up
                await reader.read()
            else:
                for byte in DRIP:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(self.interval)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the client gave up: what a tarpit wants


def oidc_discovery(base: str) -> dict[str, Any]:
    """An OpenID discovery document for issuer ``base`` naming the tarpit's own endpoints."""
    return {
        "issuer": base,
        "authorization_endpoint": f"{base}/auth",
        "token_endpoint": f"{base}/token",
        "jwks_uri": f"{base}/jwks",
        "userinfo_endpoint": f"{base}/userinfo",
        "response_types_supported": ["code"],
        "id_token_signing_alg_values_supported": ["RS256"],
    }


async def unavailable_in_time(call: Awaitable[object], deadline: float, margin: float = 1.5) -> str:
    """The call's UpstreamUnavailable text, asserting it came within ``deadline`` plus ``margin``
    (a shared, slow test machine); a regression that hangs fails after 20 s more instead."""
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable) as raised:
        await asyncio.wait_for(call, deadline + 20)
    elapsed = time.monotonic() - started
    assert elapsed < deadline + margin, f"answered after {elapsed:.1f} s: {raised.value}"
    return str(raised.value)
