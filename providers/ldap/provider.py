"""LDAP / Active Directory sign-in: search the user as the service account, bind as the user.

ldap3 is synchronous; every directory call runs in a worker thread so the event loop never
waits on the network. Outcomes are kept apart: wrong password or unknown user (one message),
a disabled or locked account, and a directory that cannot be reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import ssl
import threading
from collections.abc import Iterable
from typing import Any

import ldap3
from ldap3.core import exceptions as ldap_errors
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import parse_dn

from providers.base import AccountDisabled, Identity, InvalidCredentials, ProviderError, UpstreamUnavailable
from providers.ldap.config import LdapProviderConfig

_USERNAME = re.compile(r"^[A-Za-z0-9._@+\-]{1,128}$")
_AD_DISABLED = 0x2
_AD_LOCKOUT = 0x10
_IN_CHAIN = "1.2.840.113556.1.4.1941"


class LdapProvider:
    """``PasswordProvider`` and ``RefreshProvider`` over ldap3."""

    def __init__(self, config: LdapProviderConfig) -> None:
        self.config = config
        self.id = config.id
        self.display_name = config.display_name
        tls = None
        if any(u.startswith("ldaps://") for u in config.urls) or config.start_tls:
            tls = ldap3.Tls(
                validate=ssl.CERT_REQUIRED if config.verify_tls else ssl.CERT_NONE,
                ca_certs_file=config.ca_file,
                version=ssl.PROTOCOL_TLS_CLIENT,
            )
        servers = [
            ldap3.Server(
                url,
                use_ssl=url.startswith("ldaps://"),
                tls=tls,
                connect_timeout=config.connect_timeout,
                get_info=ldap3.NONE,
            )
            for url in config.urls
        ]
        self._pool = ldap3.ServerPool(servers, ldap3.FIRST, active=1, exhaust=30)
        # Service-account connections: at most pool_size searches run at once, each on a bound
        # connection of its own; idle ones are kept for the next search.
        self._idle: list[ldap3.Connection] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(config.pool_size)
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

    # -- connections -----------------------------------------------------------------------
    def _connect(self, user: str | None, password: str | None) -> ldap3.Connection:
        conn = ldap3.Connection(
            self._pool,
            user=user,
            password=password,
            receive_timeout=max(1, round(self.config.operation_timeout)),
            auto_bind=ldap3.AUTO_BIND_NONE,
            raise_exceptions=False,
            read_only=True,
        )
        conn.open()
        # Decided by the server the pool picked (failover may land on a plain ldap:// URL), and
        # a failed StartTLS stops here: no password is ever sent in the clear.
        if self.config.start_tls and not conn.server.ssl:
            try:
                started = bool(conn.start_tls())
                why = str(conn.result.get("description")) if conn.result else "no answer"
            except ldap_errors.LDAPException as exc:
                started, why = False, str(exc)
            if not started:
                self._close(conn)
                raise UpstreamUnavailable(f"StartTLS failed: {why}")
        return conn

    def _close(self, conn: ldap3.Connection) -> None:
        """Unbind, and drop the connection from the server pool, which otherwise keeps every
        connection ever made (a user's password included) for the life of the process."""
        with contextlib.suppress(Exception):
            conn.unbind()
        self._pool.pool_states.pop(conn, None)

    def _borrow(self) -> ldap3.Connection:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if conn.bound and not conn.closed:
                    return conn
        password = self.config.bind_password.get_secret_value() if self.config.bind_password else None
        conn = self._connect(self.config.bind_dn, password)
        if not conn.bind():
            description = conn.result.get("description")
            self._close(conn)
            raise UpstreamUnavailable(f"service account bind failed: {description}")
        return conn

    def _give_back(self, conn: ldap3.Connection, healthy: bool) -> None:
        with self._lock:
            if healthy and not self._closed:
                self._idle.append(conn)
                return
            # One connection found dead: the idle ones most likely went the same way (a
            # directory restart, an idle time-out), so the retry opens a fresh one.
            stale, self._idle = self._idle, []
        for other in [conn, *stale]:
            self._close(other)

    def _search(
        self, base: str, search_filter: str, attributes: Iterable[str], scope: Any = ldap3.SUBTREE
    ) -> list[Any]:
        if not self._slots.acquire(timeout=self.config.operation_timeout):
            raise UpstreamUnavailable(f"all {self.config.pool_size} directory connections stayed busy")
        try:
            for attempt in range(2):
                conn = self._borrow()
                healthy = False
                try:
                    conn.search(base, search_filter, search_scope=scope, attributes=list(attributes), size_limit=1000)
                    result, entries = conn.result, list(conn.response or [])
                    code = result.get("result")
                    healthy = code in (0, 4, 32)  # success, size limit, no such object
                except (
                    ldap_errors.LDAPSocketOpenError,
                    ldap_errors.LDAPSocketReceiveError,
                    ldap_errors.LDAPSessionTerminatedByServerError,
                    ldap_errors.LDAPCommunicationError,
                ):
                    if attempt:
                        raise
                    continue  # a connection the server dropped: once more on a fresh one
                finally:
                    self._give_back(conn, healthy)
                if not healthy:
                    if attempt == 0 and code in (51, 52, 80, -1):  # busy, unavailable, other: retry fresh
                        continue
                    raise UpstreamUnavailable(f"search failed: {result.get('description')}")
                return [e for e in entries if e.get("type") == "searchResEntry"]
            return []
        finally:
            self._slots.release()

    # -- the protocol ----------------------------------------------------------------------
    async def login(self, username: str, password: str) -> Identity:
        if not password:
            raise InvalidCredentials("empty password refused (it would be an anonymous bind)")
        if not _USERNAME.match(username):
            raise InvalidCredentials("username has characters or a length a directory account cannot have")
        return await asyncio.to_thread(self._login, username, password)

    async def refresh(self, identity: Identity) -> Identity:
        return await asyncio.to_thread(self._refresh, identity)

    async def lookup(self, username: str) -> Identity:
        """The user's identity without a password (``explain``, refresh-time re-checks)."""
        if not _USERNAME.match(username):
            raise InvalidCredentials("no such user")
        return await asyncio.to_thread(self._lookup, username)

    async def aclose(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            self._close(conn)

    # -- work done in threads --------------------------------------------------------------
    def _guard(self, func: Any, *args: Any) -> Any:
        try:
            return func(*args)
        except ProviderError:
            raise
        except Exception as exc:  # ldap3 raises LDAPException, socket errors and more
            raise UpstreamUnavailable(f"directory unreachable: {type(exc).__name__}: {exc}") from None

    def _find(self, username: str) -> dict[str, Any] | None:
        search_filter = self.config.user_filter.replace("{username}", escape_filter_chars(username))
        entries = self._search(self.config.user_base_dn, search_filter, self._attributes)
        if len(entries) != 1:
            return None  # none, or ambiguous: refuse rather than guess
        return dict(entries[0])

    def _login(self, username: str, password: str) -> Identity:
        return self._guard(self._login_inner, username, password)  # type: ignore[no-any-return]

    def _login_inner(self, username: str, password: str) -> Identity:
        entry = self._find(username)
        dn = (
            entry["dn"]
            if entry
            else f"{self.config.username_attribute}={secrets.token_hex(8)},{self.config.user_base_dn}"
        )
        conn = self._connect(dn, password)
        try:
            bound = conn.bind()
            code = conn.result.get("result")
        finally:
            self._close(conn)
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
        return self._identity(entry)

    def _lookup(self, username: str) -> Identity:
        entry = self._guard(self._find, username)
        if entry is None:
            raise InvalidCredentials(f"unknown user {username!r}")
        if self._locked(entry):
            raise AccountDisabled(f"account {username!r} is disabled")
        return self._guard(self._identity, entry)  # type: ignore[no-any-return]

    def _refresh(self, identity: Identity) -> Identity:
        fresh = self._lookup(identity.username)
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

    def _identity(self, entry: dict[str, Any]) -> Identity:
        attrs = entry.get("attributes", {})

        def first(name: str) -> str | None:
            value = attrs.get(name)
            if isinstance(value, list):
                value = value[0] if value else None
            return str(value) if value not in (None, "") else None

        groups, names = self._groups(entry["dn"], [str(g) for g in attrs.get("memberOf", []) or []])
        return Identity(
            provider_id=self.id,
            subject=first(self.config.subject_attribute) or entry["dn"],
            username=first(self.config.username_attribute) or entry["dn"],
            email=first(self.config.email_attribute),
            display_name=first(self.config.display_name_attribute),
            groups=frozenset(groups),
            group_names=names,
            private={"dn": entry["dn"]},
            username_is_unique=True,  # the search refuses a username that matches two entries
        )

    def _groups(self, user_dn: str, member_of: list[str]) -> tuple[set[str], dict[str, str]]:
        cfg = self.config
        name_attr = cfg.group_name_attribute
        names: dict[str, str] = {}
        if cfg.active_directory_in_chain and cfg.group_base_dn:
            found = self._search(
                cfg.group_base_dn, f"(member:{_IN_CHAIN}:={escape_filter_chars(user_dn)})", [name_attr]
            )
            for e in found:
                names[e["dn"]] = _first(e, name_attr) or _rdn_value(e["dn"])
            return set(names), names
        direct: set[str] = set(member_of) if cfg.use_member_of and member_of else set()
        if not direct and cfg.group_base_dn:
            found = self._search(
                cfg.group_base_dn, cfg.group_filter.replace("{dn}", escape_filter_chars(user_dn)), [name_attr]
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
                parents += self._search(cfg.group_base_dn, f"(|{terms})", [name_attr])
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
