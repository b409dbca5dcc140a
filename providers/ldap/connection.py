"""One LDAP connection on the event loop, with many operations in flight (RFC 4511 §3.1).

Each request gets a message ID and a future; the protocol collects a search's entries under its
ID and completes the future at its SearchResultDone, whatever order the answers come in. Nothing
here occupies a thread: a wait is an ``await`` with its own deadline, and a connection that
breaks fails every operation waiting on it at once. TLS is the event loop's (``ldaps://`` from
the first byte, or StartTLS, RFC 4511 §4.14), with the server's name checked against its
certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from providers.ldap import wire
from providers.ldap.resolver import Resolver


class LinkError(Exception):
    """The connection cannot be used: refused, broken, silent past its deadline, StartTLS refused.
    The message is the reason, for the operator (never a password)."""

    def __init__(self, why: str, *, timed_out: bool = False) -> None:
        super().__init__(why)
        self.timed_out = timed_out


def reason(exc: BaseException) -> str:
    """What went wrong, in words an operator can alert on (``Connection refused``, ``timed out``,
    ``certificate verify failed``), without asyncio's "Connect call failed" wording."""
    if isinstance(exc, TimeoutError):
        return f"{exc} (timed out)" if str(exc) else "timed out"
    if isinstance(exc, ssl.SSLError):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        return os.strerror(exc.errno)
    return str(exc).strip() or type(exc).__name__


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[tuple[list[wire.Entry], wire.Result]]
    entries: list[wire.Entry] = field(default_factory=list)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.pending: dict[int, _Pending] = {}
        self.transport: asyncio.Transport | None = None
        self.lost: str | None = None  # why the connection ended, once it has
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        try:
            while (size := wire.message_length(buffer)) is not None and len(buffer) >= size:
                message = bytes(buffer[:size])
                del buffer[:size]
                self._dispatch(*wire.decode(message))
        except wire.ProtocolError as exc:
            self.fail(f"not LDAP: {exc}")
            if self.transport is not None:
                self.transport.abort()

    def _dispatch(self, message_id: int, answer: wire.Result | wire.Entry | None) -> None:
        if message_id == 0 and isinstance(answer, wire.Result):  # Notice of Disconnection (§4.4.1)
            self.fail(f"the server ended the connection: {answer.description} {answer.message}".strip())
            return
        pending = self.pending.get(message_id)
        if pending is None or answer is None:
            return  # abandoned (timed out), or a search reference
        if isinstance(answer, wire.Entry):
            pending.entries.append(answer)
            return
        del self.pending[message_id]
        if not pending.future.done():
            pending.future.set_result((pending.entries, answer))

    def eof_received(self) -> bool:
        self.fail("the server closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(reason(exc) if exc else "the server closed the connection")

    def fail(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
        pending, self.pending = self.pending, {}
        for waiting in pending.values():
            if not waiting.future.done():
                waiting.future.set_exception(LinkError(why))


class Connection:
    """An open connection to one directory server; ``request`` may be awaited by many at once."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol, tls_started: bool) -> None:
        self.loop = asyncio.get_running_loop()
        self._transport = transport
        self._protocol = protocol
        self.tls_started = tls_started
        self._next_id = 0
        self._outbox: list[bytes] = []  # requests made in this turn of the loop, sent together

    @property
    def closed(self) -> bool:
        return self._protocol.lost is not None or self._transport.is_closing()

    @property
    def in_flight(self) -> int:
        return len(self._protocol.pending)

    def _message_id(self) -> int:
        self._next_id = self._next_id % 0x7FFFFFFF + 1  # 1..2**31-1 (RFC 4511 §4.1.1)
        return self._next_id

    async def request(self, data: bytes, wait: float, message_id: int) -> tuple[list[wire.Entry], wire.Result]:
        """Send one request (built for ``message_id``) and wait up to ``wait`` seconds for its
        answer. Raises LinkError if the connection breaks or the answer does not come."""
        if self.closed:
            raise LinkError(self._protocol.lost or "connection closed")
        future: asyncio.Future[tuple[list[wire.Entry], wire.Result]] = self.loop.create_future()
        self._protocol.pending[message_id] = _Pending(future)
        if not self._outbox:
            self.loop.call_soon(self._flush)
        self._outbox.append(data)
        try:
            async with asyncio.timeout(wait):
                return await future
        except TimeoutError:
            raise LinkError(f"no answer within {wait:.3g} s (timed out)", timed_out=True) from None
        finally:
            self._protocol.pending.pop(message_id, None)

    def _flush(self) -> None:
        """One write (one system call) for every request made since the last turn of the loop."""
        outbox, self._outbox = self._outbox, []
        if outbox and not self._transport.is_closing():
            self._transport.write(b"".join(outbox))

    async def search(
        self,
        base: str,
        scope: int,
        search_filter: str,
        attributes: tuple[str, ...],
        wait: float,
        size_limit: int = 0,
    ) -> tuple[list[wire.Entry], wire.Result]:
        message_id = self._message_id()
        request = wire.search_request(message_id, base, scope, search_filter, attributes, size_limit)
        return await self.request(request, wait, message_id)

    async def bind(self, name: str, password: bytes, wait: float) -> wire.Result:
        message_id = self._message_id()
        return (await self.request(wire.bind_request(message_id, name, password), wait, message_id))[1]

    async def start_tls(self, context: ssl.SSLContext, host: str, wait: float) -> None:
        """Upgrade to TLS (RFC 4511 §4.14); raises LinkError("StartTLS failed: ...") if the server
        refuses or its certificate does not verify: nothing is sent in the clear after this."""
        message_id = self._message_id()
        _, result = await self.request(wire.start_tls_request(message_id), wait, message_id)
        if result.code != 0:
            raise LinkError(f"StartTLS failed: {result.description} {result.message}".strip())
        try:
            async with asyncio.timeout(wait):
                transport = await self.loop.start_tls(
                    self._transport, self._protocol, context, server_hostname=host, ssl_handshake_timeout=wait
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self.abort()
            raise LinkError(f"StartTLS failed: {reason(exc)}") from None
        if transport is None:
            raise LinkError("StartTLS failed: the connection closed during the handshake")
        self._transport = transport
        self._protocol.transport = transport
        self.tls_started = True

    def close(self) -> None:
        """Unbind (RFC 4511 §4.3) and close; safe to call more than once, from any state (its
        event loop closed, even)."""
        with contextlib.suppress(Exception):
            self._flush()
            if not self._transport.is_closing():
                self._transport.write(wire.unbind_request(self._message_id()))
                self._transport.close()
        self._protocol.fail("connection closed")

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._transport.abort()
        self._protocol.fail("connection closed")


def address(url: str) -> tuple[str, int, bool]:
    """Host, port and whether TLS starts at once, of an ``ldap://`` or ``ldaps://`` URL."""
    parts = urlsplit(url)
    secure = parts.scheme.lower() == "ldaps"
    return parts.hostname or "localhost", parts.port or (636 if secure else 389), secure


async def open_connection(url: str, context: ssl.SSLContext | None, wait: float, resolver: Resolver) -> Connection:
    """A connection to ``url`` within ``wait`` seconds (name resolution and, for ldaps://, the
    TLS handshake included), to the first of the host's addresses that takes it."""
    host, port, secure = address(url)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(wait):
            addresses = await resolver.resolve(host, port)
            for number, ip in enumerate(addresses, 1):
                try:
                    transport, protocol = await loop.create_connection(
                        _Protocol,
                        ip,
                        port,
                        ssl=context if secure else None,
                        server_hostname=host if secure else None,
                        ssl_handshake_timeout=wait if secure else None,
                    )
                    break
                except ssl.SSLError:
                    raise  # the certificate is the same at every address
                except OSError:
                    if number == len(addresses):
                        raise
    except TimeoutError:
        raise LinkError("timed out", timed_out=True) from None
    except (OSError, ssl.SSLError) as exc:
        raise LinkError(reason(exc)) from None
    return Connection(transport, protocol, tls_started=secure)
