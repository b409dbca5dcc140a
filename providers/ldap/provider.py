"""LDAP / Active Directory sign-in: search the user as the service account, bind as the user.

Everything runs on the event loop (providers/ldap/connection.py speaks LDAP over asyncio,
providers/ldap/pool.py keeps the connections and the circuit breaker), so a slow directory holds
no thread; host names are resolved on one thread of the provider's own
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
import re
import secrets
from collections.abc import Awaitable
from typing import Any, TypeVar, cast

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
    RefreshProvider,
    UpstreamUnavailable,
    qualified_subject,
)
from providers.ldap import wire
from providers.ldap.config import LdapProviderConfig
from providers.ldap.pool import Budget, Directory, Link, Slots

_USERNAME = re.compile(r"^[A-Za-z0-9._@+\-]{1,128}$")
_AD_DISABLED = 0x2
_AD_LOCKOUT = 0x10
_IN_CHAIN = "1.2.840.113556.1.4.1941"
_RDN_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9-]*$")
_T = TypeVar("_T")
_A = TypeVar("_A")
_B = TypeVar("_B")


def check_password(password: str) -> bytes:
    """Refuse, as a wrong password, what no directory can accept: an empty password (an
    anonymous bind), or what SASLprep (RFC 4013, applied to every simple bind) prohibits,
    control characters included. Checked before the directory is asked, so such a guess is
    counted and answered like any other wrong password. The password as the bind sends it."""
    if not password:
        raise InvalidCredentials("empty password refused (it would be an anonymous bind)")
    try:
        return bytes(validate_simple_password(password))
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
        self._directory = Directory(config)
        common = {config.username_attribute, config.subject_attribute, config.email_attribute}
        common |= {config.display_name_attribute, "userAccountControl", "pwdAccountLockedTime"}
        common.add("msDS-User-Account-Control-Computed")  # AD computes the lockout bit only here
        # memberOf only where it is read: not when an in-chain search alone gives the groups.
        walk = common | ({"memberOf"} if config.use_member_of else set())
        self._user_attributes = {
            False: tuple(sorted(walk)),
            True: tuple(sorted(common if config.active_directory_in_chain else walk)),
        }

    # -- the protocol ----------------------------------------------------------------------
    async def login(self, username: str, password: str) -> Identity:
        prepared = check_password(password)  # SASLprep once (~12-50 µs), for the check and the bind
        if not _USERNAME.match(username):
            raise InvalidCredentials("username has characters or a length a directory account cannot have")
        return await self._directory.run(self._login_inner, username, prepared)

    async def refresh(self, identity: Identity) -> Identity:
        return await self._directory.run(self._refresh, identity)

    async def lookup(self, username: str) -> Identity:
        """The user's identity without a password (``explain``, refresh-time re-checks)."""
        if not _USERNAME.match(username):
            raise InvalidCredentials("no such user")
        return await self._directory.run(self._lookup, username)

    async def aclose(self) -> None:
        await self._directory.close()

    # Read by the tests: the state of the connections and of the circuit breaker.
    @property
    def _idle(self) -> list[Link]:
        return self._directory.idle

    @property
    def _binders(self) -> list[Link]:
        return self._directory.binders

    @property
    def _slots(self) -> Slots:
        return self._directory.slots

    @property
    def _failed_at(self) -> dict[int, float]:
        return self._directory.failed_at

    @property
    def _probing(self) -> set[int]:
        return self._directory.probing

    @property
    def _in_chain(self) -> bool | None:
        return self._directory.in_chain

    def _backing_off(self, server: int) -> bool:
        return self._directory.backing_off(server)

    async def _find(self, budget: Budget, username: str) -> wire.Entry | None:
        search_filter = self.config.user_filter.replace("{username}", escape_filter_chars(username))
        entries = await self._directory.search(
            budget, self.config.user_base_dn, search_filter, lambda: self._user_attributes[bool(self._in_chain)]
        )
        if len(entries) != 1:
            return None  # none, or ambiguous: refuse rather than guess
        return entries[0]

    async def _login_inner(self, budget: Budget, username: str, password: bytes) -> Identity:
        entry = await self._find(budget, username)
        dn = (
            entry.dn if entry else f"{self.config.username_attribute}={secrets.token_hex(8)},{self.config.user_base_dn}"
        )
        result = await self._directory.bind_user(budget, dn, password)
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

    async def _lookup(self, budget: Budget, username: str) -> Identity:
        entry = await self._find(budget, username)
        if entry is None:
            raise InvalidCredentials(f"unknown user {username!r}")
        if self._locked(_as_ldap3(entry)):
            raise AccountDisabled(f"account {username!r} is disabled")
        return await self._identity(budget, entry)

    async def _refresh(self, budget: Budget, identity: Identity) -> Identity:
        dn = identity.private.get("dn") if identity.private else None
        if isinstance(dn, str) and self._in_chain and self.config.group_base_dn:
            # The user, and the groups of the DN the last sign-in found, asked side by side: one
            # round trip instead of two. An account that moved has its groups asked again.
            entry, chain = await _both(self._find(budget, identity.username), self._chain(budget, dn))
            if entry is None:
                raise InvalidCredentials(f"unknown user {identity.username!r}")
            if self._locked(_as_ldap3(entry)):
                raise AccountDisabled(f"account {identity.username!r} is disabled")
            fresh = await self._identity(budget, entry, chain if entry.dn == dn else None)
        else:
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

    async def _identity(self, budget: Budget, entry: wire.Entry, chain: list[wire.Entry] | None = None) -> Identity:
        attrs = entry.attributes

        def first(name: str) -> str | None:
            values = attrs.get(name.lower())
            value = values[0] if values else None
            return str(value) if value not in (None, "") else None

        member_of = [str(g) for g in attrs.get("memberof", [])]
        groups, names = await self._groups(budget, entry.dn, member_of, chain)
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

    async def _chain(self, budget: Budget, user_dn: str) -> list[wire.Entry]:
        """Every group under group_base_dn that holds ``user_dn``, at any depth (one search)."""
        assert self.config.group_base_dn is not None
        search_filter = f"(member:{_IN_CHAIN}:={escape_filter_chars(user_dn)})"
        return await self._directory.search(
            budget, self.config.group_base_dn, search_filter, (self.config.group_name_attribute,)
        )

    async def _groups(
        self, budget: Budget, user_dn: str, member_of: list[str], chain: list[wire.Entry] | None = None
    ) -> tuple[set[str], dict[str, str]]:
        cfg = self.config
        name_attr = (cfg.group_name_attribute,)
        names: dict[str, str] = {}
        direct: set[str] = set(member_of) if cfg.use_member_of and member_of else set()
        if self._in_chain and cfg.group_base_dn:
            # One search: every group under group_base_dn that holds the user, at any depth. Found
            # by asking the directory, the direct groups from memberOf are kept too, as a walk
            # would keep them; configured explicitly, the in-chain search alone gives the groups.
            found = chain if chain is not None else await self._chain(budget, user_dn)
            for e in found:
                names[e.dn] = _first(e, cfg.group_name_attribute) or _rdn_value(e.dn)
            groups = set(names) | (set() if cfg.active_directory_in_chain else direct)
            for dn in groups:
                if dn not in names:
                    names[dn] = _rdn_value(dn)
            return groups, names
        if not direct and cfg.group_base_dn:
            found = await self._directory.search(
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
            found_batches = await _together(
                *(self._directory.search(budget, cfg.group_base_dn, terms, name_attr) for terms in batches)
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


async def _together(*work: Awaitable[_T]) -> list[_T]:
    """Every one of ``work`` side by side; the first failure cancels the others and is raised
    as it is (not in an ExceptionGroup), once they have ended."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _both(first: Awaitable[_A], second: Awaitable[_B]) -> tuple[_A, _B]:
    both: list[Awaitable[object]] = [first, second]
    one, two = await _together(*both)
    return cast(_A, one), cast(_B, two)


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
