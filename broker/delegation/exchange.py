"""RFC 8693 token exchange for resource servers: an MCP server trades the user's access token it
received for a token of a configured downstream target, as that user (issue 14).

Registered in ``TokenExchange.handlers`` for ``subject_token_type`` =
``urn:ietf:params:oauth:token-type:access_token`` (``requested_token_type`` the same, or absent).
In order:

1. The client is a confidential pre-registered client naming the MCP server it is
   (``registration.static_clients[].mcp_server``): a public client is ``invalid_client``, any other
   ``unauthorized_client``.
2. The subject token is one of our access tokens (signature, ``typ: at+jwt``, ``iss``, ``exp``),
   audience-bound to *that* MCP server, not itself delegated (no ``act``), from a grant still
   active (``sid``) of the same user and MCP server: else ``invalid_grant``.
3. The target, named by ``audience`` or ``resource`` (its audience or id), is configured and this
   MCP server may obtain it (a delegation rule): else ``invalid_target`` (RFC 8693 §2.2.2).
4. Scopes: the request (all the rules give when none) intersected with what the delegation rules
   give this user for (MCP server, target), with the identity the grant holds (refreshed at every
   refresh): empty is ``invalid_scope``.
5. A cached token for (grant, target, scopes), sealed under the key-encryption key, is answered
   until ``cache_margin`` before it expires; else the target's ``acquire``, whose token is cached.
   The cache is the grant's: revoking the grant drops it (``Store.revoke_grant``).

Every answer is audited (``token_exchanged``, ``token_exchange_refused`` with the reason) and
timed per target (``mcpb_token_exchange_seconds``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidTag

from broker.audit import audit
from broker.config.delegation import TargetConfigUnion
from broker.config.models import BrokerConfig, ResourceConfig
from broker.delegation.targets import (
    DelegationError,
    DelegationRequest,
    DownstreamToken,
    InteractionRequired,
    Target,
    TargetRefused,
    TargetUnavailable,
)
from broker.metrics import TOKEN_EXCHANGES
from broker.oauth.authorize import canonical_resource
from broker.oauth.clients import Client
from broker.oauth.errors import (
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    OAuthError,
    TemporarilyUnavailable,
    UnauthorizedClient,
)
from broker.oauth.grants import identity_from
from broker.oauth.sealing import Sealer
from broker.oauth.signing import KeyRing
from broker.oauth.token_exchange import ExchangeRequest
from broker.oauth.tokens import grant_of_handle, verify_access_token
from broker.policy.delegation import DelegationPolicy
from broker.store.base import Store
from broker.store.records import Grant
from providers.base import Identity


class InteractionRequiredError(OAuthError):
    """The upstream needs the user: ``interaction_uri`` is the broker page where they complete it
    (the MCP server shows it, e.g. by URL-mode elicitation); the same exchange works afterwards."""

    error = "interaction_required"
    default_description = "The user must complete a step at the broker before this token can be issued."

    def __init__(self, url: str, *, detail: str) -> None:
        super().__init__(detail=detail)
        self.url = url

    def body(self) -> dict[str, str]:
        return {**super().body(), "interaction_uri": self.url}


class DelegatedExchange:
    """The exchange handler (``__call__``), built once by the composition root."""

    def __init__(
        self,
        config: BrokerConfig,
        store: Store,
        keyring: KeyRing,
        sealer: Sealer,
        targets: Mapping[str, Target],
    ) -> None:
        self.config = config
        self.store = store
        self.keyring = keyring
        self.sealer = sealer
        self.targets = dict(targets)
        self.policy = DelegationPolicy(config.delegation.targets, config.delegation.rules)
        self.mcp_servers = {
            c.client_id: c.mcp_server for c in config.registration.static_clients if c.mcp_server is not None
        }

    async def __call__(self, client: Client, request: ExchangeRequest) -> dict[str, Any]:
        started = time.perf_counter()
        target_id = "-"
        try:
            target_config = self._target_named(request)
            target_id = target_config.id if target_config is not None else "-"
            body, outcome = await self._exchange(client, request, target_config)
        except OAuthError as exc:
            outcome = {
                "interaction_required": "interaction",
                "temporarily_unavailable": "unavailable",
            }.get(exc.error, "refused")
            audit(
                "token_exchange_refused",
                client_id=client.client_id,
                mcp_server=self.mcp_servers.get(client.client_id),
                target=target_id,
                reason=exc.error,
                detail=exc.detail,
            )
            TOKEN_EXCHANGES.labels(target_id, outcome).observe(time.perf_counter() - started)
            raise
        TOKEN_EXCHANGES.labels(target_id, outcome).observe(time.perf_counter() - started)
        return body

    def _target_named(self, request: ExchangeRequest) -> TargetConfigUnion | None:
        names = {n for n in (request.audience, request.resource) if n}
        found = {t.id: t for n in names if (t := self.config.delegation.target(n)) is not None}
        if len(found) > 1:
            return None  # audience and resource name two targets: refused below
        return next(iter(found.values()), None)

    async def _exchange(
        self, client: Client, request: ExchangeRequest, target_config: TargetConfigUnion | None
    ) -> tuple[dict[str, Any], str]:
        # 1. Only a confidential client that is one of our MCP servers.
        if client.is_public:
            raise InvalidClient(
                "A public client cannot exchange tokens.", detail=f"public client {client.client_id} tried delegation"
            )
        mcp_server_id = self.mcp_servers.get(client.client_id)
        resource = self._resource(mcp_server_id)
        if mcp_server_id is None or resource is None:
            raise UnauthorizedClient(
                "This client is not an MCP server that may exchange tokens.",
                detail=f"client {client.client_id} names no MCP server (static_clients[].mcp_server)",
            )
        # 2. The subject token: ours, for this MCP server, from an active grant.
        claims = verify_access_token(self.keyring, request.subject_token, issuer=self.config.issuer)
        if claims is None:
            raise InvalidGrant(
                "The subject_token is not a valid, unexpired access token of this authorization server.",
                detail=f"subject_token presented by {client.client_id} failed verification",
            )
        if claims.get("aud") != resource.uri:
            raise InvalidGrant(
                "The subject_token was not issued for this MCP server.",
                detail=f"subject_token for {str(claims.get('aud'))[:200]!r} presented by {client.client_id} "
                f"(MCP server {resource.uri})",
            )
        if "act" in claims:
            raise InvalidGrant(
                "A delegated token cannot be exchanged again.",
                detail=f"subject_token with act presented by {client.client_id}",
            )
        grant = await self._active_grant(claims, resource)
        # 3. The target, and whether this MCP server may obtain it at all.
        if not request.audience and not request.resource:
            raise InvalidRequest("audience or resource is required: the target the token is for")
        if target_config is None:
            raise InvalidTarget(
                "The audience or resource is not a delegation target of this server.",
                detail=f"no target {str(request.audience)[:200]!r} / {str(request.resource)[:200]!r}",
            )
        target = self.targets.get(target_config.id)
        if target is None or not self.policy.allows_any(mcp_server_id, target_config.id):
            raise InvalidTarget(
                "This MCP server may not obtain tokens for that target.",
                detail=f"no delegation rule lets {mcp_server_id} obtain {target_config.id}",
            )
        # 4. Scopes the policy gives this user there.
        identity = self._identity(grant)
        decision = self.policy.evaluate(mcp_server_id, target_config.id, identity)
        scopes = self.policy.narrow(decision, request.scopes)
        if not scopes:
            raise InvalidScope(
                "The user holds none of the requested scopes of this target."
                if request.scopes is not None
                else "The user holds no scope of this target.",
                detail=f"{grant.subject} via {mcp_server_id} asked {request.scopes} of {target_config.id}, "
                f"rules give {sorted(decision.scopes)}",
            )
        subject_exp = int(claims["exp"])
        # 5. The cache, else the target.
        slot = f"{target_config.id} {' '.join(sorted(scopes))}"
        token = await self._cached(grant, target, slot, subject_exp)
        outcome = "cached"
        if token is None:
            outcome = "issued"
            token = await self._acquire(
                target,
                DelegationRequest(
                    grant=grant,
                    identity=identity,
                    mcp_server=resource,
                    client_id=client.client_id,
                    scopes=scopes,
                    subject_expires_at=subject_exp,
                    subject_claims=claims,
                ),
            )
            await self._keep(grant, target, slot, token)
        now = int(time.time())
        audit(
            "token_exchanged",
            grant_id=grant.grant_id,
            client_id=client.client_id,
            mcp_server=mcp_server_id,
            target=target_config.id,
            sub=grant.subject,
            scopes=sorted(token.scopes),
            cached=outcome == "cached",
        )
        body: dict[str, Any] = {
            "access_token": token.access_token,
            "issued_token_type": token.issued_token_type,
            "token_type": token.token_type,
            "expires_in": max(0, token.expires_at - now),
            "scope": " ".join(sorted(token.scopes)),
        }
        return body, outcome

    def _identity(self, grant: Grant) -> Identity:
        """The user as the grant holds them, provider-private part opened (upstream state)."""
        if grant.identity is None:
            raise InvalidGrant("The grant holds no identity.", detail=f"grant {grant.grant_id} has no identity")
        try:
            return identity_from(grant.identity, self.sealer)
        except (InvalidTag, ValueError) as exc:  # sealed under another key-encryption key
            raise InvalidGrant(
                "The sign-in this token comes from cannot be used for delegation; sign in again.",
                detail=f"grant {grant.grant_id}: identity does not open ({type(exc).__name__})",
            ) from None

    def _resource(self, mcp_server_id: str | None) -> ResourceConfig | None:
        return next((r for r in self.config.resources if r.id == mcp_server_id), None)

    async def _active_grant(self, claims: Mapping[str, Any], resource: ResourceConfig) -> Grant:
        handle = claims.get("sid")
        grant_id = grant_of_handle(handle) if isinstance(handle, str) else None
        grant = await self.store.get_grant(grant_id) if grant_id else None
        if (
            grant is None
            or grant.status != "active"
            or grant.token_handle != handle  # a token of an epoch a narrowing ended
            or grant.subject != claims.get("sub")
            or canonical_resource(grant.resource) != resource.uri
        ):
            raise InvalidGrant(
                "The sign-in this token comes from has ended or was revoked.",
                detail=f"grant {str(grant_id)[:40]} of the subject_token is {grant.status if grant else 'gone'}",
            )
        return grant

    async def _acquire(self, target: Target, request: DelegationRequest) -> DownstreamToken:
        try:
            return await target.acquire(request)
        except InteractionRequired as exc:
            raise InteractionRequiredError(exc.url, detail=f"target {target.id}: {exc.detail}") from None
        except TargetUnavailable as exc:
            raise TemporarilyUnavailable(
                "The downstream service's authorization server did not answer; try again later.",
                detail=f"target {target.id}: {exc.detail}",
            ) from None
        except TargetRefused as exc:
            raise InvalidGrant(
                "The downstream service's authorization server refused to issue a token for this user.",
                detail=f"target {target.id}: {exc.detail}",
            ) from None
        except DelegationError as exc:
            raise InvalidGrant(
                "No token could be issued for this target.", detail=f"target {target.id}: {exc.detail}"
            ) from None

    def _context(self, grant: Grant, slot: str) -> str:
        return f"downstream:{grant.grant_id}:{slot}"

    async def _cached(self, grant: Grant, target: Target, slot: str, subject_exp: int) -> DownstreamToken | None:
        if not self.sealer.enabled:
            return None
        blob = await self.store.get_downstream_token(grant.grant_id, slot)
        if blob is None:
            return None
        try:
            token = DownstreamToken.from_json(self.sealer.open(blob, context=self._context(grant, slot)))
        except Exception:  # a blob sealed under another key: fetch a new one
            return None
        if token.expires_at - target.config.cache_margin <= time.time():
            return None
        if target.kind == "internal" and token.expires_at > subject_exp:
            return None  # minted for a longer-lived subject token than the one presented
        return token

    async def _keep(self, grant: Grant, target: Target, slot: str, token: DownstreamToken) -> None:
        ttl = token.expires_at - target.config.cache_margin - time.time()
        if not self.sealer.enabled or ttl <= 0:
            return
        sealed = self.sealer.seal(token.to_json(), context=self._context(grant, slot))
        if sealed is not None:
            await self.store.put_downstream_token(grant.grant_id, slot, sealed, ttl)
