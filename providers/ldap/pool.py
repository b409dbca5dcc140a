"""The connections of one LDAP provider to its directory servers, within each request's budget.

Failover across ``urls``, the per-server circuit breaker (``failure_backoff``), at most
``pool_size`` shared service-account connections with many searches in flight on each, the kept
connections for users' binds, and the bound on requests at once (``operations_per_connection``).
Every wait is cut to what is left of the request's ``request_deadline``.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import math
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ldap3.protocol.sasl.sasl import validate_simple_password

from providers.base import ProviderError, UpstreamUnavailable
from providers.ldap import wire
from providers.ldap.config import LdapProviderConfig
from providers.ldap.connection import Connection, LinkError, address, open_connection
from providers.ldap.resolver import Resolver
from providers.net import tls_context

# Root DSE supportedCapabilities of Active Directory and of AD LDS (MS-ADTS 3.1.1.3.4.3).
_AD_CAPABILITIES = {"1.2.840.113556.1.4.800", "1.2.840.113556.1.4.1851"}
_ALL = "(objectClass=*)"
_SIZE_LIMIT = 1000
_T = TypeVar("_T")


@dataclass
class Budget:
    """One request's time and the servers it has seen fail (each is tried at most once)."""

    deadline: float  # time.monotonic() by which the request is answered
    seconds: float  # the configured request_deadline, for messages
    failed: set[int] = field(default_factory=set)
    probes: set[int] = field(default_factory=set)
    why: list[str] = field(default_factory=list)  # "url: reason" of each server that failed

    def left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise UpstreamUnavailable(
                f"no answer from the directory within request_deadline ({self.seconds:g} s)"
                + "".join(f"; {why}" for why in self.why)
            )
        return left


@dataclass(eq=False)
class Link:
    """A connection and the index (in ``config.urls``) of the server it goes to."""

    conn: Connection
    server: int


class Slots:
    """At most ``limit`` requests at the directory at once; the others wait, in the event loop,
    in the order they came."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.busy = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        if self.busy < self.limit and not self._waiters:
            self.busy += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # release() hands its slot over
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed over just as the wait ended: pass it on
            else:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.busy -= 1


class Directory:
    """The servers of one provider and the connections to them, shared by every request; each
    request goes through ``run``, with a ``Budget`` of its own."""

    def __init__(self, config: LdapProviderConfig) -> None:
        self.config = config
        self._tls: ssl.SSLContext | None = None
        if any(u.startswith("ldaps://") for u in config.urls) or config.start_tls:
            self._tls = tls_context(config.ca_file)
            if not config.verify_tls:
                self._tls.check_hostname = False
                self._tls.verify_mode = ssl.CERT_NONE
        self._resolver = Resolver(config.id)
        self.idle: list[Link] = []  # the open service-account connections, shared by all searches
        self.binders: list[Link] = []  # kept anonymous connections for the users' binds
        self._forgetting: set[asyncio.Task[None]] = set()
        self._opening = 0  # service-account connections being opened
        self._opened: asyncio.Future[None] | None = None  # resolved when an opening ends
        self.slots = Slots(config.pool_size * config.operations_per_connection)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.failed_at: dict[int, float] = {}  # server index -> time.monotonic() of its last failure
        self.probing: set[int] = set()
        self._closed = False
        # Whether nested groups come from one in-chain search; None until the root DSE is read.
        self.in_chain: bool | None = config.active_directory_in_chain
        if not (config.nested_groups and config.group_base_dn):
            self.in_chain = bool(self.in_chain)  # nothing to ask the directory

    # -- the circuit breaker ---------------------------------------------------------------
    def _candidates(self, budget: Budget) -> list[int]:
        """Servers to try, in order: those not backing off; if every server is, the one that
        failed longest ago, unless another request is already probing it."""
        now = time.monotonic()
        backoff = self.config.failure_backoff
        untried = [i for i in range(len(self.config.urls)) if i not in budget.failed]
        ready = [i for i in untried if now - self.failed_at.get(i, -math.inf) >= backoff]
        if ready:
            return ready
        free = [i for i in untried if i not in self.probing]
        if not free:
            return []
        probe = min(free, key=lambda i: self.failed_at.get(i, -math.inf))
        self.probing.add(probe)
        budget.probes.add(probe)
        return [probe]

    def _failed(self, server: int, budget: Budget, reason: str) -> None:
        budget.failed.add(server)
        budget.why.append(f"{self.config.urls[server]}: {reason}")
        self.failed_at[server] = time.monotonic()
        for link in [link for link in self.idle if link.server == server]:
            self._drop(link)
        for link in [link for link in self.binders if link.server == server]:
            self.binders.remove(link)
            link.conn.close()

    def _answered(self, server: int) -> None:
        self.failed_at.pop(server, None)

    def backing_off(self, server: int) -> bool:
        failed = self.failed_at.get(server)
        return failed is not None and time.monotonic() - failed < self.config.failure_backoff

    # -- connections -----------------------------------------------------------------------
    async def _connect(self, budget: Budget) -> Link:
        """Open a connection to the first server that takes one (StartTLS done), or raise
        UpstreamUnavailable naming every server tried and why it failed."""
        for index in self._candidates(budget):
            url = self.config.urls[index]
            try:
                wait = min(self.config.connect_timeout, budget.left())
                conn = await open_connection(url, self._tls, wait, self._resolver)
            except LinkError as exc:
                self._failed(index, budget, str(exc))
                continue
            # Decided per server (failover may land on a plain ldap:// URL), and a failed
            # StartTLS stops here: no password is ever sent in the clear.
            if self.config.start_tls and not conn.tls_started:
                assert self._tls is not None
                try:
                    await conn.start_tls(self._tls, address(url)[0], self._timeout(budget))
                except LinkError as exc:
                    conn.abort()
                    reason = str(exc) if str(exc).startswith("StartTLS") else f"StartTLS failed: {exc}"
                    self._failed(index, budget, reason)
                    continue
            return Link(conn, index)
        raise self._unavailable(budget)

    def _unavailable(self, budget: Budget) -> UpstreamUnavailable:
        if not budget.why:
            return UpstreamUnavailable(
                f"every directory server failed within failure_backoff ({self.config.failure_backoff:g} s) "
                "and another request is already trying again"
            )
        return UpstreamUnavailable("no directory server could be used: " + "; ".join(budget.why))

    def _timeout(self, budget: Budget) -> float:
        """The wait for the next answer: the operation timeout, or what is left of the request."""
        return min(self.config.operation_timeout, budget.left())

    async def _exchange(self, link: Link, budget: Budget, operation: Callable[[float], Awaitable[_T]]) -> _T:
        """One request and its answer on ``link``; a broken or silent server is marked failed."""
        try:
            return await operation(self._timeout(budget))
        except LinkError as exc:
            link.conn.abort()
            self._failed(link.server, budget, str(exc))
            raise UpstreamUnavailable(f"{self.config.urls[link.server]}: {exc}") from None

    def _drop(self, link: Link) -> None:
        if link in self.idle:
            self.idle.remove(link)
        link.conn.close()

    async def _service(self, budget: Budget) -> tuple[Link, bool]:
        """A bound service-account connection for one more operation, and whether it was open
        already: the least busy open one, or a new one while fewer than ``pool_size`` are."""
        while True:
            for link in [link for link in self.idle if link.conn.closed or self.backing_off(link.server)]:
                self._drop(link)
            usable = [link for link in self.idle if link.server not in budget.failed]
            best = min(usable, key=lambda link: link.conn.in_flight, default=None)
            room = len(self.idle) + self._opening < self.config.pool_size
            if best is not None and (best.conn.in_flight == 0 or not room):
                return best, True
            if room:
                break
            if not self._opening or all(self.backing_off(i) for i in range(len(self.config.urls))):
                raise self._unavailable(budget)  # nothing worth waiting for
            if self._opened is None:
                self._opened = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._opened)  # another request is opening one: wait for it
        self._opening += 1
        try:
            link = await self._open_service(budget)
        finally:
            self._opening -= 1
            opened, self._opened = self._opened, None
            if opened is not None and not opened.done():
                opened.set_result(None)
        if self._closed:
            link.conn.close()
            raise UpstreamUnavailable("directory provider closed")
        self.idle.append(link)
        return link, False

    async def _open_service(self, budget: Budget) -> Link:
        cfg = self.config
        name = cfg.bind_dn or ""
        secret = cfg.bind_password.get_secret_value() if cfg.bind_password else ""
        password = validate_simple_password(secret, accept_empty=True) if name else b""
        while True:  # a server that takes the connection but breaks or stays silent: the next one
            link = await self._connect(budget)
            try:
                result = await self._exchange(link, budget, functools.partial(link.conn.bind, name, password))
                if result.code == 0 and self.in_chain is None:
                    self.in_chain = await self._exchange(link, budget, functools.partial(self._is_ad, link.conn))
                break
            except UpstreamUnavailable:
                link.conn.abort()
                if link.server not in budget.failed:
                    raise
            except BaseException:
                link.conn.abort()
                raise
        if result.code != 0:
            link.conn.close()
            raise UpstreamUnavailable(f"service account bind failed at {cfg.urls[link.server]}: {result.description}")
        self._answered(link.server)
        return link

    # -- binds as the user ------------------------------------------------------------------
    async def bind_user(self, budget: Budget, dn: str, password: bytes) -> wire.Result:
        """Bind as the user on a connection used for nothing but binds: a kept one (anonymous
        again, see ``_forget``) to the server a new connection would go to, or a new one. A bind
        changes who a connection is, so no search ever runs on these."""
        for attempt in range(2):
            link = self._kept_binder(budget)
            reused = link is not None
            if link is None:
                link = await self._connect(budget)
            try:
                result = await link.conn.bind(dn, password, self._timeout(budget))
            except LinkError as exc:
                link.conn.abort()
                if reused and not exc.timed_out and attempt == 0:
                    continue  # dropped while it was kept (an idle time-out): a new one
                self._failed(link.server, budget, str(exc))
                raise UpstreamUnavailable(f"{self.config.urls[link.server]}: {exc}") from None
            self._answered(link.server)
            if result.code in (0, 49, 53) and self.config.bind_pool_size:  # success, invalidCredentials, unwilling
                self._forget(link)
            else:
                link.conn.close()
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _kept_binder(self, budget: Budget) -> Link | None:
        """A kept bind connection to the first server not failing, if there is one; a kept one to
        another server is closed (the first server is back: binds go there again)."""
        ready = [i for i in range(len(self.config.urls)) if i not in budget.failed and not self.backing_off(i)]
        while self.binders:
            link = self.binders.pop()
            if not link.conn.closed and ready and link.server == ready[0]:
                return link
            link.conn.close()
        return None

    def _forget(self, link: Link) -> None:
        """Make the connection anonymous again (RFC 4513 §5.1.1), off the sign-in's path, then keep
        it for the next bind (at most ``bind_pool_size`` are kept): no connection stays signed in
        as a user. A directory that refuses anonymous binds gets a new connection per bind."""

        async def forget() -> None:
            try:
                result = await link.conn.bind("", b"", self.config.operation_timeout)
            except LinkError:
                link.conn.abort()
                return
            except asyncio.CancelledError:  # the provider is closing
                link.conn.abort()
                raise
            if (
                result.code == 0
                and not self._closed
                and self._loop is loop
                and len(self.binders) < self.config.bind_pool_size
            ):
                self.binders.append(link)
            else:
                link.conn.close()

        loop = asyncio.get_running_loop()
        task = loop.create_task(forget())
        self._forgetting.add(task)
        task.add_done_callback(self._forgetting.discard)

    @staticmethod
    async def _is_ad(conn: Connection, wait: float) -> bool:
        """Whether the root DSE says Active Directory (or AD LDS), which has the in-chain rule."""
        entries, _ = await conn.search("", wire.BASE, _ALL, ("supportedCapabilities",), wait)
        found = {str(v) for e in entries for v in e.attributes.get("supportedcapabilities", [])}
        return bool(found & _AD_CAPABILITIES)

    async def search(
        self,
        budget: Budget,
        base: str,
        search_filter: str,
        attributes: tuple[str, ...] | Callable[[], tuple[str, ...]],
        scope: int = wire.SUBTREE,
    ) -> list[wire.Entry]:
        for attempt in range(2):
            link, reused = await self._service(budget)
            asked = attributes() if callable(attributes) else attributes
            try:
                entries, result = await link.conn.search(
                    base, scope, search_filter, asked, self._timeout(budget), size_limit=_SIZE_LIMIT
                )
            except LinkError as exc:
                # A kept connection the server dropped (a restart, an idle time-out) is tried once
                # more on a fresh one; a server that broke or stayed silent is marked failed.
                self._drop(link)
                if not reused or exc.timed_out:
                    self._failed(link.server, budget, str(exc))
                if attempt:
                    raise UpstreamUnavailable(f"{self.config.urls[link.server]}: {exc}") from None
                continue
            if result.code in (0, 4, 32):  # success, size limit, no such object
                self._answered(link.server)
                return entries
            self._drop(link)
            if attempt == 0 and result.code in (51, 52, 80):  # busy, unavailable, other: retry elsewhere
                self._failed(link.server, budget, f"search failed: {result.description}")
                continue
            raise UpstreamUnavailable(f"search failed at {self.config.urls[link.server]}: {result.description}")
        return []

    async def close(self) -> None:
        self._closed = True
        idle, self.idle, binders, self.binders = self.idle, [], self.binders, []
        for link in idle + binders:
            link.conn.close()
        for task in list(self._forgetting):
            task.cancel()
        self._resolver.close()

    def _same_loop(self) -> None:
        """Connections belong to one event loop: a provider used from another (a second
        ``asyncio.run``) starts afresh there."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop and self._loop is not None:
            for link in self.idle + self.binders:
                link.conn.abort()
            self.idle, self.binders, self._opening, self._opened = [], [], 0, None
            self.slots = Slots(self.slots.limit)
        self._loop = loop

    async def run(self, func: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        """``func(budget, *args)`` within request_deadline, once one of the directory's slots is
        free (the wait for it is in the event loop and inside the deadline too)."""
        if self._closed:
            raise UpstreamUnavailable("directory provider closed")
        self._same_loop()
        seconds = self.config.request_deadline
        budget = Budget(deadline=time.monotonic() + seconds, seconds=seconds)
        started = False
        try:
            # Every wait inside is cut to the budget and ends first; this is the safety net.
            async with asyncio.timeout(seconds + 0.05):
                await self.slots.acquire()
                started = True
                try:
                    return await self._guard(func(budget, *args))
                finally:
                    self.slots.release()
        except TimeoutError:
            if not started:
                raise UpstreamUnavailable(
                    f"all {self.config.pool_size} directory connections stayed busy "
                    f"({self.slots.limit} requests at once) for request_deadline ({seconds:g} s)"
                ) from None
            raise UpstreamUnavailable(
                f"no answer from {', '.join(self.config.urls)} within request_deadline ({seconds:g} s)"
                + "".join(f"; {why}" for why in budget.why)
            ) from None
        finally:
            self.probing -= budget.probes

    @staticmethod
    async def _guard(work: Awaitable[_T]) -> _T:
        try:
            return await work
        except (ProviderError, TimeoutError, asyncio.CancelledError):
            raise
        except Exception as exc:  # a protocol error, a filter the directory cannot take, ...
            raise UpstreamUnavailable(f"directory unreachable: {type(exc).__name__}: {exc}") from None
