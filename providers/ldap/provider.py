"""LDAP / Active Directory sign-in: search the user as the service account, bind as the user.

Everything runs on the event loop (providers/ldap/connection.py speaks LDAP over asyncio), so a
slow directory holds no thread; host names are resolved on one thread of the provider's own
(providers/ldap/resolver.py), never in the default executor. Searches share at most ``pool_size``
long-lived service-account connections, each carrying many operations at once (RFC 4511 message
IDs), so a distant directory costs latency, not throughput. A user's bind changes a connection's
identity, so sign-ins bind on other connections, used for nothing but binds: up to
``bind_pool_size`` are kept, each made anonymous again after every bind. At most
``pool_size`` times ``operations_per_connection`` requests talk to the directory at once; the others
wait in the event loop, within ``request_deadline``.

Outages are answered within deadlines. The configured URLs are tried in order by the provider
itself: a refused connection moves to the next URL at once, a silent one after
``connect_timeout``, and every wait on an answer is cut to ``operation_timeout`` and to what is
left of ``request_deadline``. A server that fails is skipped for ``failure_backoff`` seconds (a
per-server circuit breaker) while another server is not; when every server is backing off, one
request at a time tries the one that failed longest ago, the others are answered at once, and the
first success closes the breaker again.

A lookup asks only for the attributes an identity needs. Nested groups come from one search with
Active Directory's LDAP_MATCHING_RULE_IN_CHAIN when the directory's root DSE says it is Active
Directory (``active_directory_in_chain`` unset), or when configured so; otherwise from a walk,
one search per nesting level.

Outcomes are kept apart: wrong password or unknown user (one message), a disabled or locked
account, and a directory that cannot be reached (``UpstreamUnavailable``, whose message says
which server failed and why, for the operator's log; it never contains a password).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import math
import re
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ldap3.core import exceptions as ldap_errors
from ldap3.protocol.sasl.sasl import validate_simple_password
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import parse_dn

from providers.base import (
    AccountDisabled,
    EmailDomainHints,
    Identity,
    InvalidCredentials,
    Lifecycle,
    LookupProvider,
    PasswordProvider,
    ProviderError,
    RefreshProvider,
    UpstreamUnavailable,
    qualified_subject,
)
from providers.ldap import wire
from providers.ldap.config import LdapProviderConfig
from providers.ldap.connection import Connection, LinkError, address, open_connection
from providers.ldap.resolver import Resolver

_USERNAME = re.compile(r"^[A-Za-z0-9._@+\-]{1,128}$")
_AD_DISABLED = 0x2
_AD_LOCKOUT = 0x10
_IN_CHAIN = "1.2.840.113556.1.4.1941"
_RDN_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9-]*$")
# Root DSE supportedCapabilities of Active Directory and of AD LDS (MS-ADTS 3.1.1.3.4.3).
_AD_CAPABILITIES = {"1.2.840.113556.1.4.800", "1.2.840.113556.1.4.1851"}
_ALL = wire.compile_filter("(objectClass=*)")
_SIZE_LIMIT = 1000
# The same users and groups are looked up again and again (every re-check): their filters too.
_compiled = functools.lru_cache(maxsize=4096)(wire.compile_filter)
_T = TypeVar("_T")


@dataclass
class _Budget:
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
class _Link:
    """A connection and the index (in ``config.urls``) of the server it goes to."""

    conn: Connection
    server: int


class _Slots:
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


def check_password(password: str) -> None:
    """Refuse, as a wrong password, what no directory can accept: an empty password (an
    anonymous bind), or what SASLprep (RFC 4013, applied to every simple bind) prohibits,
    control characters included. Checked before the directory is asked, so such a guess is
    counted and answered like any other wrong password."""
    if not password:
        raise InvalidCredentials("empty password refused (it would be an anonymous bind)")
    try:
        validate_simple_password(password)
    except ldap_errors.LDAPException as exc:  # the message names the rule, never the password
        raise InvalidCredentials(f"password refused: {exc}") from None


class LdapProvider(PasswordProvider, RefreshProvider, LookupProvider, Lifecycle, EmailDomainHints):
    """``PasswordProvider``, ``RefreshProvider`` and ``LookupProvider`` over LDAPv3 on asyncio."""

    refresh_spends_upstream_token = False  # a directory lookup spends nothing

    @property
    def email_domains(self) -> tuple[str, ...]:
        return tuple(self.config.email_domains)

    def __init__(self, config: LdapProviderConfig) -> None:
        self.config = config
        self.id = config.id
        self.display_name = config.display_name
        self._tls: ssl.SSLContext | None = None
        if any(u.startswith("ldaps://") for u in config.urls) or config.start_tls:
            self._tls = ssl.create_default_context(cafile=config.ca_file)
            if not config.verify_tls:
                self._tls.check_hostname = False
                self._tls.verify_mode = ssl.CERT_NONE
        self._idle: list[_Link] = []  # the open service-account connections, shared by all searches
        self._binders: list[_Link] = []  # kept anonymous connections for the users' binds
        self._forgetting: set[asyncio.Task[None]] = set()
        self._opening = 0  # service-account connections being opened
        self._opened: asyncio.Future[None] | None = None  # resolved when an opening ends
        self._slots = _Slots(config.pool_size * config.operations_per_connection)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failed_at: dict[int, float] = {}  # server index -> time.monotonic() of its last failure
        self._probing: set[int] = set()
        self._closed = False
        self._in_chain: bool | None = config.active_directory_in_chain
        if not (config.nested_groups and config.group_base_dn):
            self._in_chain = bool(self._in_chain)  # nothing to ask the directory
        self._resolver = Resolver(config.id)
        common = {config.username_attribute, config.subject_attribute, config.email_attribute}
        common |= {config.display_name_attribute, "userAccountControl", "pwdAccountLockedTime"}
        common.add("msDS-User-Account-Control-Computed")  # AD computes the lockout bit only here
        # memberOf only where it is read: not when an in-chain search alone gives the groups.
        walk = common | ({"memberOf"} if config.use_member_of else set())
        self._user_attributes = {
            False: tuple(sorted(walk)),
            True: tuple(sorted(common if config.active_directory_in_chain else walk)),
        }

    # -- the circuit breaker ---------------------------------------------------------------
    def _candidates(self, budget: _Budget) -> list[int]:
        """Servers to try, in order: those not backing off; if every server is, the one that
        failed longest ago, unless another request is already probing it."""
        now = time.monotonic()
        backoff = self.config.failure_backoff
        untried = [i for i in range(len(self.config.urls)) if i not in budget.failed]
        ready = [i for i in untried if now - self._failed_at.get(i, -math.inf) >= backoff]
        if ready:
            return ready
        free = [i for i in untried if i not in self._probing]
        if not free:
            return []
        probe = min(free, key=lambda i: self._failed_at.get(i, -math.inf))
        self._probing.add(probe)
        budget.probes.add(probe)
        return [probe]

    def _failed(self, server: int, budget: _Budget, reason: str) -> None:
        budget.failed.add(server)
        budget.why.append(f"{self.config.urls[server]}: {reason}")
        self._failed_at[server] = time.monotonic()
        for link in [link for link in self._idle if link.server == server]:
            self._drop(link)
        for link in [link for link in self._binders if link.server == server]:
            self._binders.remove(link)
            link.conn.close()

    def _answered(self, server: int) -> None:
        self._failed_at.pop(server, None)

    def _backing_off(self, server: int) -> bool:
        failed = self._failed_at.get(server)
        return failed is not None and time.monotonic() - failed < self.config.failure_backoff

    # -- connections -----------------------------------------------------------------------
    async def _connect(self, budget: _Budget) -> _Link:
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
            return _Link(conn, index)
        raise self._unavailable(budget)

    def _unavailable(self, budget: _Budget) -> UpstreamUnavailable:
        if not budget.why:
            return UpstreamUnavailable(
                f"every directory server failed within failure_backoff ({self.config.failure_backoff:g} s) "
                "and another request is already trying again"
            )
        return UpstreamUnavailable("no directory server could be used: " + "; ".join(budget.why))

    def _timeout(self, budget: _Budget) -> float:
        """The wait for the next answer: the operation timeout, or what is left of the request."""
        return min(self.config.operation_timeout, budget.left())

    async def _exchange(self, link: _Link, budget: _Budget, operation: Callable[[float], Awaitable[_T]]) -> _T:
        """One request and its answer on ``link``; a broken or silent server is marked failed."""
        try:
            return await operation(self._timeout(budget))
        except LinkError as exc:
            link.conn.abort()
            self._failed(link.server, budget, str(exc))
            raise UpstreamUnavailable(f"{self.config.urls[link.server]}: {exc}") from None

    def _drop(self, link: _Link) -> None:
        if link in self._idle:
            self._idle.remove(link)
        link.conn.close()

    async def _service(self, budget: _Budget) -> tuple[_Link, bool]:
        """A bound service-account connection for one more operation, and whether it was open
        already: the least busy open one, or a new one while fewer than ``pool_size`` are."""
        while True:
            for link in [link for link in self._idle if link.conn.closed or self._backing_off(link.server)]:
                self._drop(link)
            usable = [link for link in self._idle if link.server not in budget.failed]
            best = min(usable, key=lambda link: link.conn.in_flight, default=None)
            room = len(self._idle) + self._opening < self.config.pool_size
            if best is not None and (best.conn.in_flight == 0 or not room):
                return best, True
            if room:
                break
            if not self._opening or all(self._backing_off(i) for i in range(len(self.config.urls))):
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
        self._idle.append(link)
        return link, False

    async def _open_service(self, budget: _Budget) -> _Link:
        cfg = self.config
        name = cfg.bind_dn or ""
        secret = cfg.bind_password.get_secret_value() if cfg.bind_password else ""
        password = validate_simple_password(secret, accept_empty=True) if name else b""
        while True:  # a server that takes the connection but breaks or stays silent: the next one
            link = await self._connect(budget)
            try:
                result = await self._exchange(link, budget, functools.partial(link.conn.bind, name, password))
                if result.code == 0 and self._in_chain is None:
                    self._in_chain = await self._exchange(link, budget, functools.partial(self._is_ad, link.conn))
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
    async def _bind_user(self, budget: _Budget, dn: str, password: bytes) -> wire.Result:
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

    def _kept_binder(self, budget: _Budget) -> _Link | None:
        """A kept bind connection to the first server not failing, if there is one; a kept one to
        another server is closed (the first server is back: binds go there again)."""
        ready = [i for i in range(len(self.config.urls)) if i not in budget.failed and not self._backing_off(i)]
        while self._binders:
            link = self._binders.pop()
            if not link.conn.closed and ready and link.server == ready[0]:
                return link
            link.conn.close()
        return None

    def _forget(self, link: _Link) -> None:
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
                and len(self._binders) < self.config.bind_pool_size
            ):
                self._binders.append(link)
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

    async def _search(
        self,
        budget: _Budget,
        base: str,
        search_filter: str,
        attributes: tuple[str, ...] | Callable[[], tuple[str, ...]],
        scope: int = wire.SUBTREE,
    ) -> list[wire.Entry]:
        compiled = _compiled(search_filter)
        for attempt in range(2):
            link, reused = await self._service(budget)
            asked = attributes() if callable(attributes) else attributes
            try:
                entries, result = await link.conn.search(
                    base, scope, compiled, asked, self._timeout(budget), size_limit=_SIZE_LIMIT
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

    # -- the protocol ----------------------------------------------------------------------
    async def login(self, username: str, password: str) -> Identity:
        check_password(password)
        if not _USERNAME.match(username):
            raise InvalidCredentials("username has characters or a length a directory account cannot have")
        return await self._run(self._login_inner, username, password)

    async def refresh(self, identity: Identity) -> Identity:
        return await self._run(self._refresh, identity)

    async def lookup(self, username: str) -> Identity:
        """The user's identity without a password (``explain``, refresh-time re-checks)."""
        if not _USERNAME.match(username):
            raise InvalidCredentials("no such user")
        return await self._run(self._lookup, username)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle, binders, self._binders = self._idle, [], self._binders, []
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
            for link in self._idle + self._binders:
                link.conn.abort()
            self._idle, self._binders, self._opening, self._opened = [], [], 0, None
            self._slots = _Slots(self._slots.limit)
        self._loop = loop

    async def _run(self, func: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        """``func(budget, *args)`` within request_deadline, once one of the directory's slots is
        free (the wait for it is in the event loop and inside the deadline too)."""
        if self._closed:
            raise UpstreamUnavailable("directory provider closed")
        self._same_loop()
        seconds = self.config.request_deadline
        budget = _Budget(deadline=time.monotonic() + seconds, seconds=seconds)
        started = False
        try:
            # Every wait inside is cut to the budget and ends first; this is the safety net.
            async with asyncio.timeout(seconds + 0.05):
                await self._slots.acquire()
                started = True
                try:
                    return await self._guard(func(budget, *args))
                finally:
                    self._slots.release()
        except TimeoutError:
            if not started:
                raise UpstreamUnavailable(
                    f"all {self.config.pool_size} directory connections stayed busy "
                    f"({self._slots.limit} requests at once) for request_deadline ({seconds:g} s)"
                ) from None
            raise UpstreamUnavailable(
                f"no answer from {', '.join(self.config.urls)} within request_deadline ({seconds:g} s)"
                + "".join(f"; {why}" for why in budget.why)
            ) from None
        finally:
            self._probing -= budget.probes

    @staticmethod
    async def _guard(work: Awaitable[_T]) -> _T:
        try:
            return await work
        except (ProviderError, TimeoutError, asyncio.CancelledError):
            raise
        except Exception as exc:  # a protocol error, a filter the directory cannot take, ...
            raise UpstreamUnavailable(f"directory unreachable: {type(exc).__name__}: {exc}") from None

    async def _find(self, budget: _Budget, username: str) -> wire.Entry | None:
        search_filter = self.config.user_filter.replace("{username}", escape_filter_chars(username))
        entries = await self._search(
            budget, self.config.user_base_dn, search_filter, lambda: self._user_attributes[bool(self._in_chain)]
        )
        if len(entries) != 1:
            return None  # none, or ambiguous: refuse rather than guess
        return entries[0]

    async def _login_inner(self, budget: _Budget, username: str, password: str) -> Identity:
        entry = await self._find(budget, username)
        dn = (
            entry.dn if entry else f"{self.config.username_attribute}={secrets.token_hex(8)},{self.config.user_base_dn}"
        )
        result = await self._bind_user(budget, dn, validate_simple_password(password))
        if entry is None:  # the bind above keeps unknown users as slow as known ones
            raise InvalidCredentials(f"unknown user {username!r}")
        attributes = _as_ldap3(entry)
        if result.code != 0:
            if result.code == 49 and "data 533" in result.message:
                raise AccountDisabled(f"account {username!r} is disabled")
            if result.code in (49, 53):  # invalidCredentials, unwillingToPerform (e.g. ppolicy lockout)
                if result.code == 53 or self._locked(attributes):
                    raise AccountDisabled(f"account {username!r} is locked or disabled")
                raise InvalidCredentials(f"wrong password for {username!r}")
            raise UpstreamUnavailable(f"bind failed: {result.description}")
        if self._locked(attributes):
            raise AccountDisabled(f"account {username!r} is disabled")
        return await self._identity(budget, entry)

    async def _lookup(self, budget: _Budget, username: str) -> Identity:
        entry = await self._find(budget, username)
        if entry is None:
            raise InvalidCredentials(f"unknown user {username!r}")
        if self._locked(_as_ldap3(entry)):
            raise AccountDisabled(f"account {username!r} is disabled")
        return await self._identity(budget, entry)

    async def _refresh(self, budget: _Budget, identity: Identity) -> Identity:
        fresh = await self._lookup(budget, identity.username)
        if fresh.subject != identity.subject:
            raise InvalidCredentials(f"user {identity.username!r} was replaced by another account")
        return fresh

    @staticmethod
    def _locked(entry: dict[str, Any]) -> bool:
        """Disabled or locked: Active Directory's account-control flags (read without a schema,
        so they arrive as text; AD keeps the lockout bit current only in the computed
        attribute), or an OpenLDAP ppolicy lock. Attribute names in any case."""
        attrs = {name.lower(): value for name, value in entry.get("attributes", {}).items()}
        for name in ("useraccountcontrol", "msds-user-account-control-computed"):
            if _flags(attrs.get(name)) & (_AD_DISABLED | _AD_LOCKOUT):
                return True
        return bool(attrs.get("pwdaccountlockedtime"))

    async def _identity(self, budget: _Budget, entry: wire.Entry) -> Identity:
        attrs = entry.attributes

        def first(name: str) -> str | None:
            values = attrs.get(name.lower())
            value = values[0] if values else None
            return str(value) if value not in (None, "") else None

        member_of = [str(g) for g in attrs.get("memberof", [])]
        groups, names = await self._groups(budget, entry.dn, member_of)
        return Identity(
            provider_id=self.id,
            subject=qualified_subject(self.id, first(self.config.subject_attribute) or entry.dn),
            username=first(self.config.username_attribute) or entry.dn,
            email=first(self.config.email_attribute),
            display_name=first(self.config.display_name_attribute),
            groups=frozenset(groups),
            group_names=names,
            private={"dn": entry.dn},
            username_is_unique=True,  # the search refuses a username that matches two entries
        )

    async def _groups(self, budget: _Budget, user_dn: str, member_of: list[str]) -> tuple[set[str], dict[str, str]]:
        cfg = self.config
        name_attr = (cfg.group_name_attribute,)
        names: dict[str, str] = {}
        direct: set[str] = set(member_of) if cfg.use_member_of and member_of else set()
        if self._in_chain and cfg.group_base_dn:
            # One search: every group under group_base_dn that holds the user, at any depth. Found
            # by asking the directory, the direct groups from memberOf are kept too, as a walk
            # would keep them; configured explicitly, the in-chain search alone gives the groups.
            found = await self._search(
                budget, cfg.group_base_dn, f"(member:{_IN_CHAIN}:={escape_filter_chars(user_dn)})", name_attr
            )
            for e in found:
                names[e.dn] = _first(e, cfg.group_name_attribute) or _rdn_value(e.dn)
            groups = set(names) | (set() if cfg.active_directory_in_chain else direct)
            for dn in groups:
                if dn not in names:
                    names[dn] = _rdn_value(dn)
            return groups, names
        if not direct and cfg.group_base_dn:
            found = await self._search(
                budget, cfg.group_base_dn, cfg.group_filter.replace("{dn}", escape_filter_chars(user_dn)), name_attr
            )
            for e in found:
                direct.add(e.dn)
                names[e.dn] = _first(e, cfg.group_name_attribute) or _rdn_value(e.dn)
        groups = set(direct)
        frontier = set(direct)
        depth = 0
        while frontier and cfg.nested_groups and cfg.group_base_dn and depth < cfg.nested_depth:
            depth += 1
            nxt: set[str] = set()
            # One search per nesting level (in batches of 50, side by side): the parents of every
            # group found so far.
            ordered = sorted(frontier)
            batches = [
                "(|"
                + "".join(cfg.group_filter.replace("{dn}", escape_filter_chars(dn)) for dn in ordered[i : i + 50])
                + ")"
                for i in range(0, len(ordered), 50)
            ]
            found_batches = await asyncio.gather(
                *(self._search(budget, cfg.group_base_dn, terms, name_attr) for terms in batches)
            )
            for e in (e for batch in found_batches for e in batch):
                if e.dn not in names:
                    names[e.dn] = _first(e, cfg.group_name_attribute) or _rdn_value(e.dn)
                if e.dn not in groups:  # cycle guard
                    groups.add(e.dn)
                    nxt.add(e.dn)
            frontier = nxt
        for dn in groups:
            if dn not in names:
                names[dn] = _rdn_value(dn)
        return groups, names


def _as_ldap3(entry: wire.Entry) -> dict[str, Any]:
    """An entry in the shape ``_locked`` reads (ldap3's search-response dict)."""
    return {"dn": entry.dn, "attributes": entry.attributes}


def _flags(value: Any) -> int:
    """An integer attribute as it comes without a schema (``['514']``), or 0."""
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    try:
        return int(str(value).strip()) if value is not None else 0
    except ValueError:
        return 0


def _first(entry: wire.Entry, name: str) -> str | None:
    values = entry.attributes.get(name.lower())
    value = values[0] if values else None
    return str(value) if value else None


def _rdn_value(dn: str) -> str:
    """The value of a DN's first RDN (``cn=staff,ou=groups,...`` -> ``staff``)."""
    if not any(c in dn for c in '\\"+#;<>'):  # nothing escaped or quoted: the common case, quickly
        # (what ldap3's parse_dn, the slow way below, would give)
        name, _, value = dn.split(",", 1)[0].partition("=")
        if _RDN_TYPE.match(name) and value and value == value.strip() and "=" not in value:
            return value
    try:
        return str(parse_dn(dn)[0][1])
    except Exception:
        return dn
