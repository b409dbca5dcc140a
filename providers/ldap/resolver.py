"""Directory host names to addresses, on a thread of the provider's own.

The event loop's ``getaddrinfo`` runs in its default executor, a handful of threads every
``asyncio.to_thread`` caller shares (MSAL, for one): a slow DNS server would hold them all while
sign-ins open connections. Here one thread per provider resolves, a wait for it is bounded by the
caller's deadline, and an answer is kept for five minutes, as ldap3 kept it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from concurrent.futures import ThreadPoolExecutor

KEEP = 300.0  # seconds an answer is used before the name is resolved again


class ResolveError(OSError):
    """The name does not resolve; the message says so, for the operator."""


class Resolver:
    def __init__(self, name: str) -> None:
        self._name = name
        self._executor: ThreadPoolExecutor | None = None
        self._known: dict[tuple[str, int], tuple[float, list[str]]] = {}

    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses of ``host``, in the resolver's order (an IP address is its own)."""
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        now = time.monotonic()
        known = self._known.get((host, port))
        if known is not None and now - known[0] < KEEP:
            return known[1]
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ldap-dns-{self._name}")
        try:
            found = await asyncio.get_running_loop().run_in_executor(
                self._executor, socket.getaddrinfo, host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, socket.IPPROTO_TCP
            )
        except socket.gaierror as exc:
            raise ResolveError(f"cannot resolve {host}: {exc.strerror}") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
        self._known[(host, port)] = (now, addresses)
        return addresses

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
