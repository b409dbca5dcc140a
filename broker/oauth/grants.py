"""The token endpoint's grants (OAuth 2.1 §4.1.3 and §4.3), framework-free.

* ``authorization_code``: the code is spent atomically, and only by its own client (another
  client's attempt leaves it unspent); a replay revokes what it issued.
* ``refresh_token``: rotated on every use. The first caller wins an atomic swap; concurrent or
  retried callers within ``refresh_reuse_grace`` get the winner's response (sealed under the old
  token in the store), later reuse revokes the whole grant. At every refresh the user's groups
  are looked up again (where the provider can) and the policy re-applied: scopes may shrink,
  never grow, and the resource never changes. A signal may narrow the grant while a refresh runs
  (``Store.narrow_grant``): the rotation minted from the grant as it was read is refused
  (``stale``, nothing written) and the refresh mints again from the narrowed grant.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, cast

import structlog

from broker.audit import audit
from broker.config.models import BrokerConfig
from broker.metrics import REFRESH_REUSE, TOKENS_ISSUED, TOKENS_REFRESHED
from broker.oauth import pkce
from broker.oauth.authorize import find_resource
from broker.oauth.clients import Client
from broker.oauth.errors import (
    InvalidGrant,
    InvalidScope,
    InvalidTarget,
    TemporarilyUnavailable,
    UnauthorizedClient,
)
from broker.oauth.grant_memo import GrantMemo
from broker.oauth.id_token import mint_id_token
from broker.oauth.recheck import Rechecks
from broker.oauth.sealing import Sealer
from broker.oauth.signing import KeyRing
from broker.oauth.tokens import mint_for_grant, new_grant_id, new_handle, open_for, parse_handle, seal_for
from broker.oauth.vault import Vault
from broker.policy import Policy
from broker.policy.holder import PolicyHolder
from broker.scim.groups import GroupSource
from broker.store.base import Store
from broker.store.keys import digest
from broker.store.records import AuthorizationCode, Grant, RefreshToken, StoredIdentity
from broker.upstream_log import log_upstream_failure
from providers.base import AccountDisabled, Identity, InvalidCredentials, Provider, ProviderError, RefreshProvider

_log = structlog.get_logger("mcp_broker.grants")
UPSTREAM_LOCK_SECONDS = 10.0
SUCCESSOR_MARGIN = 30  # seconds a retried refresh's answer outlives the reuse grace window (clock skew)
NARROWED_RETRIES = 3  # times a refresh mints again when signals narrow its grant while it runs
_REFRESHES: dict[type, bool] = {}  # provider class -> implements RefreshProvider
_ACTIVE = RefreshToken("active")


class _Stale(Exception):
    """A rotation started from the memo's grant was refused by the store: start over from it."""


def _refresher(provider: Provider | None) -> RefreshProvider | None:
    """``provider`` when it can re-check a user at refresh (``RefreshProvider``), else None. Asked
    at every refresh: the isinstance check on the runtime protocol walks its members (~16 µs on
    Python 3.11) and its answer belongs to the provider's class, so it is kept per class."""
    kind = type(provider)
    refreshes = _REFRESHES.get(kind)
    if refreshes is None:
        refreshes = _REFRESHES[kind] = isinstance(provider, RefreshProvider)
    return cast(RefreshProvider, provider) if refreshes else None


def _spends_upstream_token(provider: Provider | None) -> bool:
    """Whether ``provider``'s re-check spends an upstream refresh token (a ClassVar: per class)."""
    refresher = _refresher(provider)
    return refresher is not None and refresher.refresh_spends_upstream_token


def identity_record(identity: Identity, sealer: Sealer) -> StoredIdentity:
    """What the store keeps of an identity; provider-private data only encrypted."""
    return StoredIdentity(
        provider_id=identity.provider_id,
        subject=identity.subject,
        username=identity.username,
        email=identity.email,
        display_name=identity.display_name,
        groups=tuple(sorted(identity.groups)),
        group_names=dict(identity.group_names),
        username_is_unique=identity.username_is_unique,
        private=sealer.seal(dict(identity.private), context=f"identity:{identity.provider_id}:{identity.subject}"),
        upstream_session=identity.upstream_session,
    )


class _SealedPrivate(Mapping[str, Any]):
    """An identity's provider-private data, opened (HKDF and AES-GCM) at its first read: a refresh
    whose re-check answer is already kept never reads it. A wrong key or a tampered blob raises
    at that read, as ``Sealer.open`` does."""

    __slots__ = ("_blob", "_context", "_opened", "_sealer")

    def __init__(self, sealer: Sealer, blob: str | None, context: str) -> None:
        self._sealer, self._blob, self._context = sealer, blob, context
        self._opened: dict[str, Any] | None = None

    def _data(self) -> dict[str, Any]:
        if self._opened is None:
            self._opened = self._sealer.open(self._blob, context=self._context)
        return self._opened

    def __getitem__(self, key: str) -> Any:
        return self._data()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data())

    def __len__(self) -> int:
        return len(self._data())

    def __repr__(self) -> str:
        return "<sealed provider-private data>"


def identity_from(record: StoredIdentity, sealer: Sealer, *, lazy: bool = False) -> Identity:
    """The identity a grant keeps; with ``lazy`` its private part is opened only when read."""
    context = f"identity:{record.provider_id}:{record.subject}"
    return Identity(
        provider_id=record.provider_id,
        subject=record.subject,
        username=record.username,
        email=record.email,
        display_name=record.display_name,
        groups=frozenset(record.groups),
        group_names=dict(record.group_names),
        username_is_unique=record.username_is_unique,
        private=(
            _SealedPrivate(sealer, record.private, context)
            if lazy and record.private
            else sealer.open(record.private, context=context)
        ),
        upstream_session=record.upstream_session,
    )


@dataclass
class GrantService:
    config: BrokerConfig
    store: Store
    keyring: KeyRing
    policies: PolicyHolder
    providers: Mapping[str, Provider]
    sealer: Sealer
    _rechecks: Rechecks = field(init=False)  # the upstream re-check, shared (broker.oauth.recheck)
    _memo: GrantMemo = field(default_factory=GrantMemo)  # grants this process just rotated
    # Groups from SCIM for the providers that take them from there (scim.tenants[].groups_source):
    # applied to every identity signing in (BrowserFlow) or looked at again (re-check, current_identity).
    groups: GroupSource = field(init=False)

    def __post_init__(self) -> None:
        self.groups = GroupSource(self.store, self.config.scim.tenants)
        self._rechecks = Rechecks(
            self.store,
            lambda: self.config.tokens.upstream_recheck_interval,
            lambda identity: identity_record(identity, self.sealer),
            lambda record: identity_from(record, self.sealer),
        )

    @property
    def policy(self) -> Policy:
        return self.policies.current

    def _token_response(self, grant: Grant, scopes: list[str], refresh: str | None) -> dict[str, Any]:
        ttl = self.config.tokens.access_token_ttl
        access = mint_for_grant(self.keyring, issuer=self.config.issuer, grant=grant, scopes=scopes, ttl=ttl)
        body: dict[str, Any] = {
            "access_token": access.token,
            "token_type": "Bearer",
            "expires_in": ttl,
            "scope": " ".join(sorted(scopes)),
        }
        if refresh is not None:
            body["refresh_token"] = refresh
        return body

    def _refresh_ttls(self, grant: Grant, now: float) -> tuple[int, int]:
        remaining = int(grant.expires_at - now)
        return min(self.config.tokens.refresh_token_idle_ttl, remaining), remaining

    # -- browser flow --------------------------------------------------------------------------
    def seal_flow_data(self, flow_id: str, data: Mapping[str, Any]) -> dict[str, Any] | str | None:
        """A provider's flow data as a pending flow keeps it: sealed when a key encryption key is
        configured (short-lived either way)."""
        return self.sealer.seal(dict(data), context=f"flow:{flow_id}") if self.sealer.enabled else dict(data)

    def open_flow_data(self, flow_id: str, data: dict[str, Any] | str | None) -> dict[str, Any]:
        return data if isinstance(data, dict) else self.sealer.open(data, context=f"flow:{flow_id}")

    def new_code(
        self,
        *,
        client_id: str,
        redirect_uri: str,
        redirect_uri_given: bool,
        code_challenge: str,
        resource: str,
        scopes: list[str],
        identity: Identity,
        openid: bool = False,
        nonce: str | None = None,
    ) -> tuple[str, str, AuthorizationCode]:
        """A new authorization code for a signed-in user: its grant id, the code and the record the
        store keeps for it (``Store.spend_flow`` stores it, for ``code_ttl`` seconds)."""
        grant_id = new_grant_id()
        code = new_handle("ac", grant_id)
        record = AuthorizationCode(
            code_hash=digest(code),
            client_id=client_id,
            redirect_uri=redirect_uri,
            redirect_uri_given=redirect_uri_given,
            code_challenge=code_challenge,
            resource=resource,
            scopes=tuple(scopes),
            identity=identity_record(identity, self.sealer),
            auth_time=int(time.time()),
            policy_version=self.policy.version,
            openid=openid,
            nonce=nonce,
        )
        return grant_id, code, record

    @property
    def code_ttl(self) -> int:
        return self.config.tokens.authorization_code_ttl

    # -- authorization_code ----------------------------------------------------------------
    async def exchange_code(self, client: Client, form: Mapping[str, str]) -> dict[str, Any]:
        code = form.get("code")
        grant_id = parse_handle("ac", code)
        if grant_id is None or code is None:
            raise InvalidGrant(detail="malformed authorization code")
        code_hash = digest(code)
        taken = await self.store.take_code(grant_id, code_hash, client.client_id)
        if taken.outcome == "wrong_client":  # refused before spending: the code stays its owner's
            raise InvalidGrant(detail=f"code of grant {grant_id} presented by {client.client_id}, not its client")
        if taken.outcome == "replayed":
            await self.store.revoke_grant(grant_id, "code_replayed")
            audit("code_replayed", grant_id=grant_id, client_id=client.client_id)
            raise InvalidGrant(detail=f"authorization code of grant {grant_id} replayed; grant revoked")
        if taken.outcome != "ok" or taken.code is None:
            raise InvalidGrant(detail="unknown or expired authorization code")
        record = taken.code
        # RFC 6749 §4.1.3: required if the authorization request had one, and then identical
        # (no loopback port leeway here: that applies to matching the registration only).
        redirect_uri = form.get("redirect_uri")
        if redirect_uri is None and record.redirect_uri_given:
            raise InvalidGrant(detail="redirect_uri is required: the authorization request had one")
        if redirect_uri is not None and redirect_uri != record.redirect_uri:
            raise InvalidGrant(detail="redirect_uri differs from the authorization request")
        if not pkce.verify(form.get("code_verifier"), record.code_challenge):
            raise InvalidGrant(detail="PKCE code_verifier does not match the code_challenge")
        resource = form.get("resource")
        if resource is not None:
            found = find_resource(self.policy, resource)
            if found is None or found.uri != record.resource:
                raise InvalidTarget(detail=f"token request resource {resource!r} differs from the code's")
        now = time.time()
        grant = Grant(
            grant_id=grant_id,
            client_id=client.client_id,
            subject=record.identity.subject,
            username=record.identity.username,
            provider_id=record.identity.provider_id,
            resource=record.resource,
            scopes=" ".join(record.scopes),
            identity=record.identity,
            created_at=now,
            last_refresh=now,
            auth_time=record.auth_time,
            expires_at=now + self.config.tokens.refresh_token_absolute_ttl,
            status="active",
            code_hash=code_hash,
            policy_version=record.policy_version,
        )
        issue_refresh = "refresh_token" in client.grant_types
        refresh = new_handle("rt", grant_id) if issue_refresh else None
        idle, remaining = self._refresh_ttls(grant, now)
        await self.store.create_grant(grant, digest(refresh) if refresh else "none", idle, remaining)
        response = self._token_response(grant, list(record.scopes), refresh)
        if record.openid:  # OpenID Connect Core §3.1.3.3: the scope held openid
            response["id_token"] = mint_id_token(
                self.keyring,
                issuer=self.config.issuer,
                subject=grant.subject,
                client_id=client.client_id,
                grant_id=grant_id,
                ttl=self.config.tokens.id_token_ttl,
                nonce=record.nonce,
                auth_time=record.auth_time,
                email=record.identity.email,
            )
        TOKENS_ISSUED.inc()
        audit(
            "token_issued",
            grant_id=grant_id,
            client_id=client.client_id,
            sub=grant.subject,
            resource=grant.resource,
            scope=response["scope"],
            refresh_token_issued=refresh is not None,
            id_token_issued=record.openid,
        )
        return response

    async def current_identity(self, grant: Grant) -> Identity:
        """The grant's user as the provider sees them now, through the same shared re-check a
        refresh uses (``tokens.upstream_recheck_interval``), for a decision outside a refresh (an
        ID-JAG). A user no longer valid upstream revokes the grant (``InvalidGrant``); an upstream
        that cannot answer is ``TemporarilyUnavailable``. A provider that cannot re-check gives
        the identity of the sign-in."""
        if grant.identity is None:
            raise InvalidGrant(detail=f"grant {grant.grant_id} has no identity to re-check")
        identity = identity_from(grant.identity, self.sealer)
        provider = self.providers.get(identity.provider_id)
        if provider is None:
            raise InvalidGrant(detail=f"provider {identity.provider_id} is no longer configured")
        try:
            if isinstance(provider, RefreshProvider):
                identity = (await self._rechecks.check(provider, identity, grant.auth_time or 0)).identity
            return await self.groups.apply(identity)
        except (InvalidCredentials, AccountDisabled) as exc:
            await self.store.revoke_grant(grant.grant_id, "user_no_longer_valid")
            raise InvalidGrant(
                "The user is no longer valid at the identity provider.",
                detail=f"user {identity.username} no longer valid upstream: {exc}",
            ) from None
        except ProviderError as exc:
            log_upstream_failure(identity.provider_id, "recheck", exc)
            raise TemporarilyUnavailable(detail=f"upstream re-check failed: {exc}") from None

    # -- refresh_token ---------------------------------------------------------------------
    async def refresh(self, client: Client, form: Mapping[str, str]) -> dict[str, Any]:
        if "refresh_token" not in client.grant_types:  # RFC 6749 §5.2
            raise UnauthorizedClient(detail=f"client {client.client_id} may not use refresh tokens")
        token = form.get("refresh_token")
        grant_id = parse_handle("rt", token)
        if grant_id is None or token is None:
            raise InvalidGrant(detail="malformed refresh token")
        old_hash = digest(token)
        remembered = self._memo.take(grant_id, old_hash)
        if remembered is not None:  # the token this process issued: its grant as the rotation wrote it
            try:
                return await self._refresh(
                    client, form, grant_id, token, old_hash, remembered, _ACTIVE, remembered=True
                )
            except _Stale:
                pass  # revoked, expired or spent meanwhile: answer from the store, as without the memo
        grant, record = await self.store.get_grant_and_refresh(grant_id, old_hash)
        return await self._refresh(client, form, grant_id, token, old_hash, grant, record)

    async def _refresh(
        self,
        client: Client,
        form: Mapping[str, str],
        grant_id: str,
        token: str,
        old_hash: str,
        grant: Grant | None,
        record: RefreshToken | None,
        *,
        remembered: bool = False,
    ) -> dict[str, Any]:
        if grant is None:
            raise InvalidGrant(detail=f"grant {grant_id} unknown or expired")
        if grant.client_id != client.client_id:
            raise InvalidGrant(detail=f"refresh token of {grant.client_id} presented by {client.client_id}")
        if grant.status != "active":
            raise InvalidGrant(detail=f"grant {grant_id} is {grant.status}")
        resource = form.get("resource")
        if resource is not None:
            found = find_resource(self.policy, resource)
            if found is None or found.uri != grant.resource:
                raise InvalidTarget(detail="a refresh cannot change the resource")
        current = grant.scope_list
        requested = form.get("scope")
        narrowed: list[str] | None = None
        if requested is not None and requested.strip():
            asked = list(dict.fromkeys(requested.split()))
            if not set(asked) <= set(current):
                raise InvalidScope(detail=f"refresh asked for {asked}, grant holds {current}")
            narrowed = asked

        if record is None:
            raise InvalidGrant(detail=f"refresh token unknown or expired for grant {grant_id}")
        if record.rotated:
            return await self._replayed(grant, token, record.rotated_at, record.successor, old_hash)

        provider = self._provider_of(grant)
        lock: str | None = None
        if _spends_upstream_token(provider) and self._recent(grant) is None:
            # One refresh at a time asks upstream when the re-check spends an upstream refresh
            # token: a provider that rotates them would take a second, concurrent use as theft
            # and end the upstream session. (A directory lookup needs no such care.)
            lock = await self.store.lock_grant(grant_id, UPSTREAM_LOCK_SECONDS)
            if lock is None:
                return await self._await_winner(grant, token, old_hash)
        try:
            if lock is not None:
                # Read again under the lock: a rotation that finished between the first read and
                # the lock has already spent the upstream token this grant held, and asking
                # upstream with it again would look like theft (and end the grant).
                grant, record = await self.store.get_grant_and_refresh(grant_id, old_hash)
                if grant is None or grant.status != "active" or record is None:
                    raise InvalidGrant(detail=f"grant {grant_id} ended during a concurrent refresh")
                if record.rotated:
                    return await self._replayed(grant, token, record.rotated_at, record.successor, old_hash)
            return await self._rotate(client, grant, token, old_hash, current, narrowed, remembered=remembered)
        finally:
            if lock is not None:
                await self.store.unlock_grant(grant_id, lock)

    def _provider_of(self, grant: Grant) -> Provider | None:
        return self.providers.get(grant.identity.provider_id if grant.identity else grant.provider_id)

    async def _await_winner(self, grant: Grant, token: str, old_hash: str) -> dict[str, Any]:
        """Another request holds the grant's upstream lock: wait for its rotation and answer alike."""
        deadline = time.monotonic() + UPSTREAM_LOCK_SECONDS
        while time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            record = await self.store.get_refresh(grant.grant_id, old_hash)
            if record is None:
                break
            if record.rotated:
                return await self._replayed(grant, token, record.rotated_at, record.successor, old_hash)
        raise TemporarilyUnavailable(detail=f"concurrent refresh of grant {grant.grant_id} did not finish")

    async def _rotate(
        self,
        client: Client,
        grant: Grant,
        token: str,
        old_hash: str,
        current: list[str],
        narrowed: list[str] | None,
        *,
        remembered: bool = False,
    ) -> dict[str, Any]:
        grant_id = grant.grant_id
        allowed, fresh = await self._reevaluate(grant)
        identity = identity_record(fresh, self.sealer) if fresh is not None else None
        for attempt in range(NARROWED_RETRIES + 1):
            grant_scopes = [s for s in current if s in allowed]
            scopes = [s for s in (narrowed if narrowed is not None else current) if s in allowed]
            if not scopes:
                raise InvalidScope(detail="none of the requested scopes is still granted")
            new_token = new_handle("rt", grant_id)
            now = time.time()
            idle, remaining = self._refresh_ttls(grant, now)
            if remaining <= 0:
                raise InvalidGrant(detail=f"grant {grant_id} reached its absolute lifetime")
            response = self._token_response(grant, scopes, new_token)
            new_hash = digest(new_token)
            result = await self.store.rotate_refresh(
                grant_id,
                old_hash,
                new_hash,
                successor=seal_for(token, response),
                new_ttl=idle,
                rotated_ttl=remaining,
                successor_ttl=int(self.config.tokens.refresh_reuse_grace) + SUCCESSOR_MARGIN,
                scopes=" ".join(grant_scopes),
                identity=identity,
                now=now,
                epoch=grant.epoch,
            )
            if remembered and result.outcome != "ok":
                raise _Stale  # nothing was written: the answer minted from the memo is dropped unseen
            if result.outcome != "stale" or attempt == NARROWED_RETRIES:
                break
            # A signal narrowed the grant since it was read (Store.narrow_grant): mint again from
            # the grant as it is now, its narrower scopes and new token handle, keeping the
            # identity this refresh looked up (an upstream token it spent lives only there).
            reread = await self.store.get_grant(grant_id)
            if reread is None or not reread.active:
                raise InvalidGrant(detail=f"grant {grant_id} ended during this refresh")
            grant = reread
            current = [s for s in current if s in grant.scope_list]
            narrowed = [s for s in narrowed if s in grant.scope_list] if narrowed is not None else None
        if result.outcome == "ok" and not _spends_upstream_token(self._provider_of(grant)):
            # Kept for the next refresh of this family (never for a provider whose re-check spends
            # an upstream token: those re-read the grant under its lock).
            written = replace(
                grant, scopes=" ".join(grant_scopes), last_refresh=now, identity=identity or grant.identity
            )
            self._memo.put(new_hash, written)
        if result.outcome == "rotated":  # another request won the race
            return await self._replayed(grant, token, result.rotated_at, result.successor, old_hash)
        if result.outcome == "stale":
            raise TemporarilyUnavailable(detail=f"grant {grant_id} kept being narrowed during this refresh")
        if result.outcome != "ok":
            raise InvalidGrant(detail=f"refresh of grant {grant_id} failed: {result.outcome}")
        TOKENS_REFRESHED.inc()
        audit(
            "token_refreshed",
            grant_id=grant_id,
            client_id=client.client_id,
            sub=grant.subject,
            scope=response["scope"],
            scope_narrowed=sorted(set(current) - set(scopes)) or None,
            policy_version=self.policy.version,
        )
        return response

    async def _replayed(
        self, grant: Grant, token: str, rotated_at: float, successor: str | None, old_hash: str
    ) -> dict[str, Any]:
        grace = self.config.tokens.refresh_reuse_grace
        if time.time() - rotated_at <= grace:
            successor = successor or await self.store.get_successor(grant.grant_id, old_hash)
            if not successor:  # kept SUCCESSOR_MARGIN seconds past the window: should not happen
                raise InvalidGrant(detail=f"the answer to a retried refresh of grant {grant.grant_id} is gone")
            response = open_for(token, successor)
            _log.info("refresh_retry_within_grace", grant_id=grant.grant_id)
            return response
        await self.store.revoke_grant(grant.grant_id, "refresh_token_reuse")
        REFRESH_REUSE.inc()
        audit(
            "refresh_reuse_detected",
            grant_id=grant.grant_id,
            client_id=grant.client_id,
            sub=grant.subject,
            rotated_seconds_ago=round(time.time() - rotated_at, 3),
        )
        raise InvalidGrant(detail=f"rotated refresh token of grant {grant.grant_id} reused; grant revoked")

    def _recent(self, grant: Grant) -> Identity | None:
        """A re-check this process made or read within the interval that this grant may use."""
        if grant.identity is None:
            return None
        hit = self._rechecks.recent(grant.identity.provider_id, grant.identity.subject, grant.auth_time or 0)
        return hit.identity if hit is not None else None

    async def _reevaluate(self, grant: Grant) -> tuple[frozenset[str], Identity | None]:
        """Scopes the user may hold now, with fresh group data where the provider can give it,
        and the fresh identity to store (None when the provider cannot refresh)."""
        if grant.identity is None:
            raise InvalidGrant(detail=f"grant {grant.grant_id} has no identity to re-check")
        # The private part is opened only if the re-check below asks upstream (not when it uses
        # a kept answer, as most refreshes do with an interval).
        identity = identity_from(grant.identity, self.sealer, lazy=True)
        provider = self.providers.get(identity.provider_id)
        if provider is None:
            raise InvalidGrant(detail=f"provider {identity.provider_id} is no longer configured")
        refresher = _refresher(provider)
        if refresher is not None and refresher.refresh_spends_upstream_token:
            # A delegated-access call may have rotated the upstream refresh token since the last
            # rotation wrote this identity: the vault holds the current one (broker.oauth.vault).
            identity = await Vault(self.store, self.sealer).current(grant.grant_id, identity)
        fresh: Identity | None = None
        try:
            if refresher is not None:
                # Shared: concurrent refreshes of the user wait on one lookup, and its answer is
                # kept for tokens.upstream_recheck_interval for every worker and replica. Only
                # this refresh's own lookup is stored in its grant (private data included).
                checked = await self._rechecks.check(refresher, identity, grant.auth_time or 0)
                identity = checked.identity
                fresh = identity if checked.looked_up else None
            if self.groups.applies(identity.provider_id):  # read after the shared answer, every refresh
                identity = await self.groups.apply(identity)
                fresh = identity if fresh is not None else None
        except (InvalidCredentials, AccountDisabled) as exc:
            await self.store.revoke_grant(grant.grant_id, "user_no_longer_valid")
            raise InvalidGrant(detail=f"user {identity.username} no longer valid upstream: {exc}") from None
        except ProviderError as exc:
            log_upstream_failure(identity.provider_id, "refresh", exc)
            raise TemporarilyUnavailable(detail=f"upstream re-check failed: {exc}") from None
        resource = self.policy.resource_for(grant.resource)
        if resource is None:
            raise InvalidGrant(detail=f"resource {grant.resource} is no longer configured")
        decision = self.policy.evaluate(resource, identity)
        if not decision.scopes & set(grant.scope_list):
            await self.store.revoke_grant(grant.grant_id, "no_scopes_left")
            audit(
                "access_denied",
                grant_id=grant.grant_id,
                sub=identity.subject,
                resource=resource.uri,
                reason="no scope left at refresh",
                policy_version=self.policy.version,
            )
            raise InvalidGrant(detail="the user no longer holds any scope for this resource")
        return decision.scopes, fresh
