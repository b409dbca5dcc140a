"""The ``entra`` and ``oidc`` targets: a token the user's upstream identity provider issues for
another API, from the upstream session kept for the grant (the vault, ``broker.oauth.vault``).

* ``entra``: Microsoft Entra through MSAL, from the user's MSAL token cache kept at sign-in
  (the provider's ``delegated_access``): silently for the target's delegated scopes (Microsoft
  Graph ``https://graph.microsoft.com/User.Read``, for example), or, with ``on_behalf_of``,
  on-behalf-of with a token for the broker's exposed API as the assertion.
* ``oidc``: a generic OpenID provider, from the upstream refresh token kept at sign-in
  (``use_upstream_refresh``): a refresh_token grant with the target's scopes and
  ``upstream_resource``, or RFC 8693 at the OP where its metadata announces it. Each call spends
  the refresh token, so calls for one grant run one at a time under the grant's upstream lock
  (the lock a refresh's re-check takes), and the grant is read again under it.

The provider's newer state (a rotated refresh token, a grown MSAL cache) is kept in the vault
before the token is returned; a revocation racing the call wins (the vault refuses a revoked
grant). When the upstream needs the user (consent, multi-factor, an expired session) the target
raises ``InteractionRequired`` with ``{issuer}/account/delegation/{target id}``: the account
page's route there signs the user in at the provider again with the target's scopes (see
docs/delegation.md for the URL's contract).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal
from urllib.parse import quote

from broker.config.delegation import EntraTargetConfig, OidcTargetConfig
from broker.delegation.targets import (
    DelegationRequest,
    DownstreamToken,
    InteractionRequired,
    TargetContext,
    TargetRefused,
    TargetUnavailable,
)
from broker.oauth.grants import identity_from
from broker.oauth.vault import Vault
from providers.base import DelegatedAccess, Identity, InteractionNeeded, ProviderError, UpstreamUnavailable

LOCK_SECONDS = 10.0  # the grant's upstream lock, as a refresh takes it (broker.oauth.grants)
LOCK_WAIT = 10.0  # how long a call waits for another call or refresh of the grant
_POLL = 0.05


def interaction_url(issuer: str, target_id: str) -> str:
    """Where the user completes the upstream step a target needs (docs/delegation.md)."""
    return f"{issuer.rstrip('/')}/account/delegation/{quote(target_id, safe='')}"


class UpstreamTarget:
    """A target whose tokens the user's upstream provider issues (kinds ``entra`` and ``oidc``)."""

    def __init__(self, config: EntraTargetConfig | OidcTargetConfig, context: TargetContext) -> None:
        self.id = config.id
        self.config = config
        self.kind: Literal["entra", "oidc"] = config.kind
        self._context = context
        self._vault = Vault(context.store, context.sealer)
        self._url = interaction_url(context.config.issuer, config.id)

    def _provider(self, identity: Identity) -> DelegatedAccess:
        if identity.provider_id != self.config.provider:
            raise TargetRefused(
                f"target {self.id} needs a session of provider {self.config.provider}; "
                f"the user signed in with {identity.provider_id}"
            )
        provider = self._context.providers.get(self.config.provider)
        if not isinstance(provider, DelegatedAccess):
            raise TargetRefused(
                f"provider {self.config.provider} keeps no upstream session for delegated access "
                "(entra: delegated_access; oidc: use_upstream_refresh)"
            )
        return provider

    async def acquire(self, request: DelegationRequest) -> DownstreamToken:
        provider = self._provider(request.identity)
        if not provider.delegated_spends_upstream_token:
            return await self._call(provider, request, request.identity)
        store, grant_id = self._context.store, request.grant.grant_id
        deadline = time.monotonic() + LOCK_WAIT
        while (lock := await store.lock_grant(grant_id, LOCK_SECONDS)) is None:
            if time.monotonic() >= deadline:
                raise TargetUnavailable(f"grant {grant_id}: another call holds its upstream lock")
            await asyncio.sleep(_POLL)
        try:
            grant = await store.get_grant(grant_id)  # a refresh may have rotated it meanwhile
            if grant is None or not grant.active or grant.identity is None:
                raise TargetRefused(f"grant {grant_id} is no longer active")
            return await self._call(provider, request, identity_from(grant.identity, self._context.sealer))
        finally:
            await store.unlock_grant(grant_id, lock)

    async def _call(self, provider: DelegatedAccess, request: DelegationRequest, identity: Identity) -> DownstreamToken:
        grant_id = request.grant.grant_id
        state = await self._vault.state(grant_id, identity)
        scopes = sorted(request.scopes & set(self.config.scopes))
        if not scopes:
            raise TargetRefused(f"none of {sorted(request.scopes)} is a scope of target {self.id}")
        options: dict[str, Any] = {}
        if isinstance(self.config, EntraTargetConfig):
            options["on_behalf_of"] = self.config.on_behalf_of
        elif self.config.upstream_resource:
            options["audience"] = self.config.upstream_resource
        try:
            token = await provider.delegated_token(state, scopes, **options)
        except InteractionNeeded as exc:
            raise InteractionRequired(self._url, f"target {self.id}: {exc}") from None
        except UpstreamUnavailable as exc:
            raise TargetUnavailable(f"target {self.id}: {exc}") from None
        except ProviderError as exc:
            raise TargetRefused(f"target {self.id}: {exc}") from None
        now = time.time()
        if token.state is not None:
            kept = await self._vault.keep(grant_id, identity, token.state, request.grant.expires_at - now)
            if not kept and provider.delegated_spends_upstream_token:
                # The refresh token was spent and the new one cannot be kept: the grant was revoked.
                raise TargetRefused(f"grant {grant_id} ended during the call; its upstream session is dropped")
        return DownstreamToken(
            access_token=token.access_token,
            expires_at=int(now) + max(0, token.expires_in),
            scopes=frozenset(token.scopes),
        )
