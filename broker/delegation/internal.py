"""The ``internal`` target: an API behind the broker that accepts the broker's own tokens.

The broker mints an RFC 9068 access token (``typ: at+jwt``, our key ring, our ``iss``) for the
target's ``audience``, for the user (``sub``), with an RFC 8693 §4.1 ``act`` claim naming the MCP
server that acts for them (``act.sub``: its resource URI; ``act.client_id``: its client id). Its
lifetime is the shortest of the target's ``ttl``, ``tokens.access_token_ttl`` and the subject
token's remaining life; its scopes are those the delegation policy gives (the request's). ``sid``
is the grant id, so a revocation reaches these tokens as it reaches the grant's own.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Literal

from broker.config.delegation import InternalTargetConfig
from broker.delegation.targets import DelegationRequest, DownstreamToken, TargetContext, TargetRefused


class InternalTarget:
    kind: Literal["internal"] = "internal"

    def __init__(self, config: InternalTargetConfig, context: TargetContext) -> None:
        self.id = config.id
        self.config: InternalTargetConfig = config
        self._issuer = context.config.issuer
        self._max_ttl = min(config.ttl, context.config.tokens.access_token_ttl)
        self._keyring = context.keyring

    async def acquire(self, request: DelegationRequest) -> DownstreamToken:
        issued = int(request.now if request.now else time.time())
        ttl = min(self._max_ttl, request.subject_expires_at - issued)
        if ttl <= 0:
            raise TargetRefused(f"subject token of grant {request.grant.grant_id} has no life left")
        scopes = sorted(request.scopes & set(self.config.scopes))
        if not scopes:
            raise TargetRefused(f"none of {sorted(request.scopes)} is a scope of target {self.id}")
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "sub": request.grant.subject,
            "aud": self.config.audience,
            "client_id": request.client_id,
            "scope": " ".join(scopes),
            "iat": issued,
            "nbf": issued,
            "exp": issued + ttl,
            "jti": secrets.token_urlsafe(16),
            "sid": request.grant.token_handle,  # ended with the grant, or with its epoch when narrowed
            "act": {"sub": request.mcp_server.uri, "client_id": request.client_id},
        }
        if request.grant.auth_time is not None:
            claims["auth_time"] = request.grant.auth_time
        token = self._keyring.current.sign_jwt(claims, typ="at+jwt")
        return DownstreamToken(access_token=token, expires_at=issued + ttl, scopes=frozenset(scopes))
