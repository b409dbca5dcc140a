"""Small network helpers shared by the providers (and used by the broker's config checks)."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import certifi

from providers.base import UpstreamUnavailable


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A verifying client context trusting certifi's bundle, the system's CAs and, when given,
    ``ca_file`` on top (a private CA adds to what is trusted; it never replaces it). Every provider
    builds its TLS trust here, so the configuration's ``ca_file`` means one thing everywhere."""
    context = ssl.create_default_context(cafile=certifi.where())
    context.load_default_certs()
    if ca_file:
        context.load_verify_locations(ca_file)
    return context


def is_loopback_host(host: str | None) -> bool:
    """``localhost`` or a loopback address (``127.0.0.0/8``, ``::1``), brackets allowed."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def describe(exc: BaseException, limit: int = 200) -> str:
    """Why a network call failed, for a log line: the exception's type and first line, and the
    innermost cause when it says more (``ConnectError: [SSL: CERTIFICATE_VERIFY_FAILED] ...``,
    ``ConnectError: All connection attempts failed (OSError: [Errno 111] Connect call failed ...)``)."""

    def line(error: BaseException) -> str:
        text = str(error).strip()
        return text.splitlines()[0][:limit] if text else ""

    found = f"{type(exc).__name__}: {line(exc)}" if line(exc) else type(exc).__name__
    inner: BaseException | None = exc
    seen: set[int] = set()
    while inner is not None and id(inner) not in seen:
        seen.add(id(inner))
        if inner.__cause__ is None and inner.__context__ is None:
            break
        inner = inner.__cause__ or inner.__context__
    if inner is not None and inner is not exc and line(inner) and line(inner) not in found:
        found += f" ({type(inner).__name__}: {line(inner)})"
    return found


@asynccontextmanager
async def deadline(seconds: float, what: str) -> AsyncIterator[None]:
    """Bound everything in the block (connecting, TLS, sending, every byte of the answer, and
    any wait for a lock) by one overall time limit: an upstream that accepts the connection and
    then answers nothing, or dribbles its answer a byte at a time, raises UpstreamUnavailable
    ``"{what} timed out after {seconds} s"`` when the time is up, not when it stops sending."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise UpstreamUnavailable(f"{what} timed out after {seconds:g} s") from None
