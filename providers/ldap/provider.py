"""LDAP / Active Directory sign-in: search the user as the service account, bind as the user.

ldap3 is synchronous, so every directory call runs in a thread, but never in the default
executor: the provider has its own ``pool_size`` threads, and a request waits for one in the
event loop, bounded by ``request_deadline``. A hung directory therefore holds at most these
threads (each until its socket times out), never the threads MSAL or anything else needs.

Outages are answered within deadlines. The configured URLs are tried in order by the provider
itself (no ldap3 ``ServerPool``, whose retry loop sleeps ten seconds whatever the timeouts say):
a refused connection moves to the next URL at once, a silent one after ``connect_timeout``, and
every wait on an answer is cut to what is left of ``request_deadline``. A server that fails is
skipped for ``failure_backoff`` seconds (a per-server circuit breaker) while another server is
not; when every server is backing off, one request at a time tries the one that failed longest
ago, the others are answered at once, and the first success closes the breaker again.

Outcomes are kept apart: wrong password or unknown user (one message), a disabled or locked
account, and a directory that cannot be reached (``UpstreamUnavailable``, whose message says
which server failed and why, for the operator's log; it never contains a password).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import ldap3
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
from providers.ldap.config import LdapProviderConfig

_USERNAME = re.compile(r"^[A-Za-z0-9._@+\-]{1,128}$")
_AD_DISABLED = 0x2
_AD_LOCKOUT = 0x10
_IN_CHAIN = "1.2.840.113556.1.4.1941"
_T = TypeVar("_T")
# A connection the network broke (as opposed to an LDAP result code).
_COMMUNICATION = (ldap_errors.LDAPCommunicationError, ldap_errors.LDAPSessionTerminatedByServerError, OSError)


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


@dataclass
class _Link:
    """A connection and the index (in ``config.urls``) of the server it goes to."""

    conn: ldap3.Connection
    server: int


def _reason(exc: BaseException) -> str:
    """What went wrong, for the operator: ldap3's message (it names the socket error, the TLS
    verification failure, the time-out) without the class-name noise."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, TimeoutError) and "timed out" not in text:
        text = f"{text} (timed out)"
    return text


def check_password(password: str) -> None:
    """Refuse, as a wrong password, what no directory can accept: an empty password (an
    anonymous bind), or what SASLprep (RFC 4013, which ldap3 applies to every simple bind)
    prohibits, control characters included. Checked before the directory is asked, so such a
    guess is counted and answered like any other wrong password."""
    if not password:
        raise InvalidCredentials("empty password refused (it would be an anonymous bind)")
    try:
        validate_simple_password(password)
    except ldap_errors.LDAPException as exc:  # the message names the rule, never the password
        raise InvalidCredentials(f"password refused: {exc}") from None


class LdapProvider(PasswordProvider, RefreshProvider, LookupProvider, Lifecycle, EmailDomainHints):
    """``PasswordProvider``, ``RefreshProvider`` and ``LookupProvider`` over ldap3."""

    refresh_spends_upstream_token = False  # a directory lookup spends nothing

    @property
    def email_domains(self) -> tuple[str, ...]:
        return tuple(self.config.email_domains)

    def __init__(self, config: LdapProviderConfig) -> None:
        self.config = config
        self.id = config.id
        self.display_name = config.display_name
        self._tls: ldap3.Tls | None = None
        if any(u.startswith("ldaps://") for u in config.urls) or config.start_tls:
            self._tls = ldap3.Tls(
                validate=ssl.CERT_REQUIRED if config.verify_tls else ssl.CERT_NONE,
                ca_certs_file=config.ca_file,
                version=ssl.PROTOCOL_TLS_CLIENT,
            )
        # The directory's own threads: at most pool_size requests talk to it at once, each on
        # one service-account connection at a time; idle ones are kept for the next search.
        self._executor = ThreadPoolExecutor(max_workers=config.pool_size, thread_name_prefix=f"ldap-{config.id}")
        self._idle: list[_Link] = []
        self._lock = threading.Lock()
        self._failed_at: dict[int, float] = {}  # server index -> time.monotonic() of its last failure
        self._probing: set[int] = set()
        self._closed = False
        self._attributes = sorted(
            {
                config.username_attribute,
                config.subject_attribute,
                config.email_attribute,
                config.display_name_attribute,
                "memberOf",
                "userAccountControl",
                "msDS-User-Account-Control-Computed",  # AD computes the lockout bit only here
                "pwdAccountLockedTime",
            }
        )

    # -- the circuit breaker ---------------------------------------------------------------
    def _candidates(self, budget: _Budget) -> list[int]:
        """Servers to try, in order: those not backing off; if every server is, the one that
        failed longest ago, unless another request is already probing it."""
        now = time.monotonic()
        backoff = self.config.failure_backoff
        with self._lock:
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
        with self._lock:
            self._failed_at[server] = time.monotonic()
            idle, self._idle = (
                [link for link in self._idle if link.server == server],
                [link for link in self._idle if link.server != server],
            )
        for link in idle:
            self._close(link.conn)

    def _answered(self, server: int) -> None:
        with self._lock:
            self._failed_at.pop(server, None)

    def _backing_off(self, server: int) -> bool:
        with self._lock:
            failed = self._failed_at.get(server)
        return failed is not None and time.monotonic() - failed < self.config.failure_backoff

    # -- connections -----------------------------------------------------------------------
    def _connect(self, user: str | None, password: str | None, budget: _Budget) -> _Link:
        """Open a connection to the first server that takes one (StartTLS done), or raise
        UpstreamUnavailable naming every server tried and why it failed."""
        for index in self._candidates(budget):
            url = self.config.urls[index]
            left = budget.left()
            server = ldap3.Server(
                url,
                use_ssl=url.startswith("ldaps://"),
                tls=self._tls,
                connect_timeout=min(self.config.connect_timeout, left),
                get_info=ldap3.NONE,
            )
            conn = ldap3.Connection(
                server,
                user=user,
                password=password,
                # ldap3 needs whole seconds here; every exchange below sets the exact wait.
                receive_timeout=max(1, math.ceil(min(self.config.operation_timeout, left))),
                auto_bind=ldap3.AUTO_BIND_NONE,
                raise_exceptions=False,
                read_only=True,
            )
            try:
                conn.open()
                # Decided per server (failover may land on a plain ldap:// URL), and a failed
                # StartTLS stops here: no password is ever sent in the clear.
                if self.config.start_tls and not server.ssl:
                    self._wait(conn, budget)
                    try:
                        started = bool(conn.start_tls())
                        failure = str(conn.result.get("description")) if conn.result else "no answer"
                    except ldap_errors.LDAPException as exc:
                        started, failure = False, _reason(exc)
                    if not started:
                        raise ConnectionError(f"StartTLS failed: {failure}")
            except (ldap_errors.LDAPException, OSError) as exc:
                self._close(conn)
                self._failed(index, budget, _reason(exc))
                continue
            return _Link(conn, index)
        if not budget.why:
            raise UpstreamUnavailable(
                f"every directory server failed within failure_backoff ({self.config.failure_backoff:g} s) "
                "and another request is already trying again"
            )
        raise UpstreamUnavailable("no directory server could be used: " + "; ".join(budget.why))

    def _wait(self, conn: ldap3.Connection, budget: _Budget) -> None:
        """Cut the next wait for an answer to the operation timeout or what is left of the request."""
        if conn.socket is not None:
            conn.socket.settimeout(min(self.config.operation_timeout, budget.left()))

    def _exchange(self, link: _Link, budget: _Budget, operation: Callable[[], _T]) -> _T:
        """One request and its answer on ``link``; a broken or silent server is marked failed."""
        self._wait(link.conn, budget)
        try:
            return operation()
        except _COMMUNICATION as exc:
            self._failed(link.server, budget, _reason(exc))
            raise UpstreamUnavailable(f"{self.config.urls[link.server]}: {_reason(exc)}") from None

    def _close(self, conn: ldap3.Connection) -> None:
        with contextlib.suppress(Exception):
            conn.unbind()

    def _borrow(self, budget: _Budget) -> tuple[_Link, bool]:
        """A bound service-account connection, and whether it was kept from an earlier search."""
        with self._lock:
            while self._idle:
                link = self._idle.pop()
                if link.conn.bound and not link.conn.closed and link.server not in budget.failed:
                    break
                self._close(link.conn)
            else:
                link = None
        if link is not None:
            if not self._backing_off(link.server):
                return link, True
            self._close(link.conn)
        password = self.config.bind_password.get_secret_value() if self.config.bind_password else None
        while True:  # a server that takes the connection but breaks or stays silent: the next one
            link = self._connect(self.config.bind_dn, password, budget)
            try:
                bound = self._exchange(link, budget, link.conn.bind)
                break
            except UpstreamUnavailable:
                self._close(link.conn)
                if link.server not in budget.failed:
                    raise
            except BaseException:
                self._close(link.conn)
                raise
        if not bound:
            description = link.conn.result.get("description")
            self._close(link.conn)
            raise UpstreamUnavailable(f"service account bind failed at {self.config.urls[link.server]}: {description}")
        self._answered(link.server)
        return link, False

    def _give_back(self, link: _Link, healthy: bool) -> None:
        with self._lock:
            if healthy and not self._closed:
                self._idle.append(link)
                return
            # One connection found dead: the idle ones most likely went the same way (a
            # directory restart, an idle time-out), so the retry opens a fresh one.
            stale, self._idle = self._idle, []
        for other in [link, *stale]:
            self._close(other.conn)

    def _search(
        self, budget: _Budget, base: str, search_filter: str, attributes: Iterable[str], scope: Any = ldap3.SUBTREE
    ) -> list[Any]:
        for attempt in range(2):
            link, reused = self._borrow(budget)
            healthy = False
            try:
                conn = link.conn
                self._wait(conn, budget)
                conn.search(base, search_filter, search_scope=scope, attributes=list(attributes), size_limit=1000)
                result, entries = conn.result, list(conn.response or [])
                code = result.get("result")
                healthy = code in (0, 4, 32)  # success, size limit, no such object
            except _COMMUNICATION as exc:
                # A kept connection the server dropped (a restart, an idle time-out) is tried once
                # more on a fresh one; a server that broke or stayed silent is marked failed.
                if not reused or isinstance(exc, TimeoutError):
                    self._failed(link.server, budget, _reason(exc))
                if attempt:
                    raise UpstreamUnavailable(f"{self.config.urls[link.server]}: {_reason(exc)}") from None
                continue
            finally:
                self._give_back(link, healthy)
            if not healthy:
                if attempt == 0 and code in (51, 52, 80, -1):  # busy, unavailable, other: retry elsewhere
                    self._failed(link.server, budget, f"search failed: {result.get('description')}")
                    continue
                raise UpstreamUnavailable(
                    f"search failed at {self.config.urls[link.server]}: {result.get('description')}"
                )
            self._answered(link.server)
            return [e for e in entries if e.get("type") == "searchResEntry"]
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
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for link in idle:
            self._close(link.conn)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self, func: Callable[..., _T], *args: Any) -> _T:
        """Run ``func(budget, *args)`` on one of the directory's threads within request_deadline.

        The wait for a free thread happens here, in the event loop; work still queued when the
        deadline passes is cancelled before it starts. Work already running is cut short by its
        socket time-outs, which never reach past the deadline either.
        """
        seconds = self.config.request_deadline
        budget = _Budget(deadline=time.monotonic() + seconds, seconds=seconds)
        loop = asyncio.get_running_loop()
        started = threading.Event()

        def work() -> _T:
            started.set()
            try:
                return self._guard(func, budget, *args)
            finally:
                if budget.probes:
                    with self._lock:
                        self._probing -= budget.probes

        try:
            future = loop.run_in_executor(self._executor, work)
        except RuntimeError as exc:  # closed
            raise UpstreamUnavailable(f"directory provider closed: {exc}") from None
        try:
            async with asyncio.timeout(seconds):
                return await future
        except TimeoutError:
            if not started.is_set():
                raise UpstreamUnavailable(
                    f"all {self.config.pool_size} directory connections stayed busy for request_deadline "
                    f"({seconds:g} s)"
                ) from None
            raise UpstreamUnavailable(
                f"no answer from {', '.join(self.config.urls)} within request_deadline ({seconds:g} s)"
                + "".join(f"; {why}" for why in list(budget.why))
            ) from None

    # -- work done in threads --------------------------------------------------------------
    @staticmethod
    def _guard(func: Callable[..., _T], *args: Any) -> _T:
        try:
            return func(*args)
        except ProviderError:
            raise
        except Exception as exc:  # ldap3 raises LDAPException, socket errors and more
            raise UpstreamUnavailable(f"directory unreachable: {type(exc).__name__}: {_reason(exc)}") from None

    def _find(self, budget: _Budget, username: str) -> dict[str, Any] | None:
        search_filter = self.config.user_filter.replace("{username}", escape_filter_chars(username))
        entries = self._search(budget, self.config.user_base_dn, search_filter, self._attributes)
        if len(entries) != 1:
            return None  # none, or ambiguous: refuse rather than guess
        return dict(entries[0])

    def _login_inner(self, budget: _Budget, username: str, password: str) -> Identity:
        entry = self._find(budget, username)
        dn = (
            entry["dn"]
            if entry
            else f"{self.config.username_attribute}={secrets.token_hex(8)},{self.config.user_base_dn}"
        )
        link = self._connect(dn, password, budget)
        conn = link.conn
        try:
            bound = self._exchange(link, budget, conn.bind)
            code = conn.result.get("result")
        finally:
            self._close(conn)
        self._answered(link.server)
        if entry is None:  # the bind above keeps unknown users as slow as known ones
            raise InvalidCredentials(f"unknown user {username!r}")
        if not bound:
            if code == 49 and "data 533" in str(conn.result.get("message", "")):
                raise AccountDisabled(f"account {username!r} is disabled")
            if code in (49, 53):  # invalidCredentials, unwillingToPerform (e.g. ppolicy lockout)
                if code == 53 or self._locked(entry):
                    raise AccountDisabled(f"account {username!r} is locked or disabled")
                raise InvalidCredentials(f"wrong password for {username!r}")
            raise UpstreamUnavailable(f"bind failed: {conn.result.get('description')}")
        if self._locked(entry):
            raise AccountDisabled(f"account {username!r} is disabled")
        return self._identity(budget, entry)

    def _lookup(self, budget: _Budget, username: str) -> Identity:
        entry = self._find(budget, username)
        if entry is None:
            raise InvalidCredentials(f"unknown user {username!r}")
        if self._locked(entry):
            raise AccountDisabled(f"account {username!r} is disabled")
        return self._identity(budget, entry)

    def _refresh(self, budget: _Budget, identity: Identity) -> Identity:
        fresh = self._lookup(budget, identity.username)
        if fresh.subject != identity.subject:
            raise InvalidCredentials(f"user {identity.username!r} was replaced by another account")
        return fresh

    @staticmethod
    def _locked(entry: dict[str, Any]) -> bool:
        """Disabled or locked: Active Directory's account-control flags (read without a schema,
        so they arrive as text; AD keeps the lockout bit current only in the computed
        attribute), or an OpenLDAP ppolicy lock."""
        attrs = entry.get("attributes", {})
        for name in ("userAccountControl", "msDS-User-Account-Control-Computed"):
            if _flags(attrs.get(name)) & (_AD_DISABLED | _AD_LOCKOUT):
                return True
        return bool(attrs.get("pwdAccountLockedTime"))

    def _identity(self, budget: _Budget, entry: dict[str, Any]) -> Identity:
        attrs = entry.get("attributes", {})

        def first(name: str) -> str | None:
            value = attrs.get(name)
            if isinstance(value, list):
                value = value[0] if value else None
            return str(value) if value not in (None, "") else None

        groups, names = self._groups(budget, entry["dn"], [str(g) for g in attrs.get("memberOf", []) or []])
        return Identity(
            provider_id=self.id,
            subject=qualified_subject(self.id, first(self.config.subject_attribute) or entry["dn"]),
            username=first(self.config.username_attribute) or entry["dn"],
            email=first(self.config.email_attribute),
            display_name=first(self.config.display_name_attribute),
            groups=frozenset(groups),
            group_names=names,
            private={"dn": entry["dn"]},
            username_is_unique=True,  # the search refuses a username that matches two entries
        )

    def _groups(self, budget: _Budget, user_dn: str, member_of: list[str]) -> tuple[set[str], dict[str, str]]:
        cfg = self.config
        name_attr = cfg.group_name_attribute
        names: dict[str, str] = {}
        if cfg.active_directory_in_chain and cfg.group_base_dn:
            found = self._search(
                budget, cfg.group_base_dn, f"(member:{_IN_CHAIN}:={escape_filter_chars(user_dn)})", [name_attr]
            )
            for e in found:
                names[e["dn"]] = _first(e, name_attr) or _rdn_value(e["dn"])
            return set(names), names
        direct: set[str] = set(member_of) if cfg.use_member_of and member_of else set()
        if not direct and cfg.group_base_dn:
            found = self._search(
                budget, cfg.group_base_dn, cfg.group_filter.replace("{dn}", escape_filter_chars(user_dn)), [name_attr]
            )
            for e in found:
                direct.add(e["dn"])
                names[e["dn"]] = _first(e, name_attr) or _rdn_value(e["dn"])
        groups = set(direct)
        frontier = set(direct)
        depth = 0
        while frontier and cfg.nested_groups and cfg.group_base_dn and depth < cfg.nested_depth:
            depth += 1
            nxt: set[str] = set()
            # One search per nesting level (in batches of 50): the parents of every group found so far.
            ordered = sorted(frontier)
            parents = []
            for start in range(0, len(ordered), 50):
                terms = "".join(
                    cfg.group_filter.replace("{dn}", escape_filter_chars(dn)) for dn in ordered[start : start + 50]
                )
                parents += self._search(budget, cfg.group_base_dn, f"(|{terms})", [name_attr])
            if parents:
                for e in parents:
                    names.setdefault(e["dn"], _first(e, name_attr) or _rdn_value(e["dn"]))
                    if e["dn"] not in groups:  # cycle guard
                        groups.add(e["dn"])
                        nxt.add(e["dn"])
            frontier = nxt
        for dn in groups:
            names.setdefault(dn, _rdn_value(dn))
        return groups, names


def _flags(value: Any) -> int:
    """An integer attribute as ldap3 returns it without a schema (``['514']``), or 0."""
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    try:
        return int(str(value).strip()) if value is not None else 0
    except ValueError:
        return 0


def _first(entry: dict[str, Any], name: str) -> str | None:
    value = entry.get("attributes", {}).get(name)
    if isinstance(value, list):
        value = value[0] if value else None
    return str(value) if value else None


def _rdn_value(dn: str) -> str:
    try:
        return str(parse_dn(dn)[0][1])
    except Exception:
        return dn
