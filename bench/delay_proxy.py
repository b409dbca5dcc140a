"""A loopback TCP proxy that holds every chunk of data for a fixed delay in each direction.

It puts a directory (or any TCP server) "some milliseconds away" on one machine: a lookup that
needs one round trip takes at least twice the delay, and many requests may be on the wire at
once, as on a real network (the delay is latency, not a bandwidth limit). Order is kept in each
direction; a close is passed on after the data before it.

Run on its own: .venv/bin/python bench/delay_proxy.py --target 127.0.0.1:389 --delay-ms 5 [--port N]
From a benchmark: ``with DelayProxy(target_port, delay_ms=5) as port: ...`` (its own process,
so its CPU time is not counted as the benchmark's).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import multiprocessing
import socket
import sys
from types import TracebackType


class _Half(asyncio.Protocol):
    """One side of a proxied connection: what it receives reaches the other side ``delay`` later."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.peer: _Half | None = None
        self.transport: asyncio.Transport | None = None
        self._queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._early: list[bytes | None] = []  # received before the other side was connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self._later(data)

    def eof_received(self) -> bool:
        self._later(None)
        return True  # keep our side open until the close has been passed on

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is None and not self._queue:
            self._later(None)

    def _later(self, data: bytes | None) -> None:
        if self.peer is None or self.peer.transport is None:
            self._early.append(data)
            return
        loop = asyncio.get_running_loop()
        self._queue.append((loop.time() + self.delay, data))
        if self._timer is None:
            self._timer = loop.call_at(self._queue[0][0], self._deliver)

    def flush_early(self) -> None:
        early, self._early = self._early, []
        for data in early:
            self._later(data)

    def _deliver(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        assert self.peer is not None and self.peer.transport is not None
        while self._queue and self._queue[0][0] <= loop.time():
            _, data = self._queue.popleft()
            if data is None or self.peer.transport.is_closing():
                self.peer.transport.close()
                if self.transport is not None:
                    self.transport.close()
                self._queue.clear()
                return
            self.peer.transport.write(data)
        if self._queue:
            self._timer = loop.call_at(self._queue[0][0], self._deliver)


async def serve(listener: socket.socket, target: tuple[str, int], delay: float) -> None:
    loop = asyncio.get_running_loop()
    connecting: set[asyncio.Task[None]] = set()

    def accepted() -> _Half:
        client = _Half(delay)

        async def connect() -> None:
            try:
                _, server = await loop.create_connection(lambda: _Half(delay), *target)
            except OSError:
                if client.transport is not None:
                    client.transport.close()
                return
            client.peer, server.peer = server, client
            client.flush_early()

        task = loop.create_task(connect())
        connecting.add(task)
        task.add_done_callback(connecting.discard)
        return client

    server = await loop.create_server(accepted, sock=listener)
    async with server:
        await server.serve_forever()


def _run(listener: socket.socket, target: tuple[str, int], delay: float) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(listener, target, delay))


class DelayProxy:
    """The proxy in a child process, listening on a free loopback port while in the ``with``."""

    def __init__(self, target_port: int, delay_ms: float, target_host: str = "127.0.0.1") -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        self._process = multiprocessing.get_context("fork").Process(
            target=_run, args=(self._listener, (target_host, target_port), delay_ms / 1000), daemon=True
        )

    def __enter__(self) -> int:
        self._process.start()
        self._listener.close()  # the child has its own copy
        return self.port

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._process.terminate()
        self._process.join(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--target", required=True, help="host:port to forward to")
    parser.add_argument("--delay-ms", type=float, default=5.0, help="added in each direction")
    parser.add_argument("--port", type=int, default=0, help="loopback port to listen on (0: any free one)")
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(128)
    print(f"127.0.0.1:{listener.getsockname()[1]} -> {args.target}, +{args.delay_ms:g} ms each way", file=sys.stderr)
    _run(listener, (host or "127.0.0.1", int(port)), args.delay_ms / 1000)


if __name__ == "__main__":
    main()
