"""Token revocation (RFC 7009) and introspection (RFC 7662), framework-free."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from broker.audit import audit
from broker.oauth.clients import Client
from broker.oauth.signing import KeyRing
from broker.oauth.tokens import grant_of_handle, parse_handle, verify_access_token
from broker.store.base import Store
from broker.store.keys import digest


@dataclass
class RevocationService:
    issuer: str
    store: Store
    keyring: KeyRing

    async def _grant_of(self, token: str) -> tuple[str | None, dict[str, Any] | None, str]:
        """(grant id, access-token claims or None, token kind) for any token we issued."""
        grant_id = parse_handle("rt", token)
        if grant_id is not None:
            return grant_id, None, "refresh_token"
        claims = verify_access_token(self.keyring, token, issuer=self.issuer)
        if claims is not None and isinstance(claims.get("sid"), str):
            return grant_of_handle(claims["sid"]), claims, "access_token"
        return None, None, "unknown"

    async def revoke(self, client: Client, token: str) -> None:
        """Revoke the grant behind ``token`` if it belongs to ``client``; silent otherwise (RFC 7009 §2.2)."""
        grant_id, _claims, kind = await self._grant_of(token)
        if grant_id is None:
            return
        grant = await self.store.get_grant(grant_id)
        if grant is None or grant.client_id != client.client_id:
            return
        if kind == "refresh_token" and await self.store.get_refresh(grant_id, digest(token)) is None:
            return
        if await self.store.revoke_grant(grant_id, f"{kind}_revoked_by_client"):
            audit("token_revoked", grant_id=grant_id, client_id=client.client_id, sub=grant.subject, token_kind=kind)

    async def revoke_user(self, subject: str, reason: str = "admin") -> list[str]:
        """Revoke every grant of one user; return the grant ids revoked."""
        revoked = []
        providers = set()
        for grant_id in await self.store.user_grant_ids(subject):
            grant = await self.store.get_grant(grant_id)
            if grant is not None:
                providers.add(grant.identity.provider_id if grant.identity else grant.provider_id)
            if await self.store.revoke_grant(grant_id, reason):
                revoked.append(grant_id)
        for provider_id in sorted(providers):  # the user's shared re-check answer goes too
            await self.store.forget_recheck(provider_id, subject)
        audit("grant_revoked", sub=subject, grants=revoked, reason=reason)
        return revoked

    async def introspect(self, caller: Client, token: str, allowed_resources: list[str]) -> dict[str, Any]:
        """RFC 7662 §2.2. Inactive for anything expired, revoked, unknown, or meant for a resource
        the caller does not serve."""
        inactive: dict[str, Any] = {"active": False}
        grant_id, claims, kind = await self._grant_of(token)
        if grant_id is None:
            return inactive
        grant = await self.store.get_grant(grant_id)
        if grant is None or not grant.active or grant.resource not in allowed_resources:
            return inactive
        if kind == "refresh_token":
            record = await self.store.get_refresh(grant_id, digest(token))
            if record is None or record.rotated:
                return inactive
            return {
                "active": True,
                "token_type": "refresh_token",
                "client_id": grant.client_id,
                "sub": grant.subject,
                "scope": grant.scopes,
                "aud": grant.resource,
                "iss": self.issuer,
                "exp": int(grant.expires_at),
            }
        assert claims is not None
        if claims["exp"] <= time.time() or claims.get("aud") not in allowed_resources:
            return inactive
        if claims.get("sid") != grant.token_handle:  # of an epoch a narrowing ended
            return inactive
        return {
            "active": True,
            "token_type": "Bearer",
            **{
                k: claims[k]
                for k in ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "nbf", "jti")
                if k in claims
            },
            "username": grant.username,
        }
