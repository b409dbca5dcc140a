"""Verify the broker's access tokens locally: the MCP SDK ``TokenVerifier`` any MCP server reuses.

RFC 9068 JWTs checked against the broker's JWKS (the shared cache of ``mcp_broker_verifier.jwks``:
fetched once, refetched on an unknown ``kid`` and after ``max_age``, never more than once per
``min_refetch_interval`` seconds whether the fetch works or not, once a second while no key is
known; concurrent misses share one fetch), with explicit algorithms,
``typ: at+jwt``, ``iss``, ``aud`` equal to this server's canonical URI (RFC 8707), and
``exp``/``nbf`` with a small leeway. Verified tokens are cached by hash until they expire.
A token must first be a compact JWS in canonical base64url (RFC 7515 §2, RFC 4648 §5): one
spelling per token, so no padded or bit-flipped copy of a token verifies as the original.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import httpx
from jose import jwk, jwt
from jose.backends.base import Key
from jose.exceptions import JOSEError
from mcp.server.auth.provider import AccessToken

from mcp_broker_verifier import jwks
from mcp_broker_verifier.cache_metrics import CacheMetrics
from mcp_broker_verifier.jws import unverified_header

ALLOWED_ALGORITHMS = ("ES256", "RS256")


class Revocations(Protocol):
    """What the verifier needs to know about revoked grants (see ``mcp_broker_verifier.revocations``)."""

    @property
    def stale(self) -> bool: ...

    def is_revoked(self, grant_id: str) -> bool: ...


class JwksCache(jwks.JwksCache[Key]):
    """The broker's signing keys at ``url``, as python-jose keys: the shared cache
    (``mcp_broker_verifier.jwks``) with the verifier's algorithms and rate limits."""

    def __init__(
        self, url: str, http: httpx.AsyncClient, *, min_refetch_interval: float = 30.0, max_age: float = 3600.0
    ) -> None:
        self.url = url
        super().__init__(
            lambda: jwks.fetch_key_set(http, url, request_timeout=5.0),
            _jose_key,
            failures=(httpx.HTTPError, ValueError),
            max_age=max_age,
            min_interval=min_refetch_interval,
            empty_interval=1.0,
            algorithms=ALLOWED_ALGORITHMS,
            require_kid=True,
        )

    async def get(self, kid: str) -> Key | None:
        try:
            found = await self.lookup(kid)
        except (httpx.HTTPError, ValueError):
            return None
        return found[0].key if found else None


def _jose_key(entry: Mapping[str, Any]) -> Key | None:
    try:
        return jwk.construct(dict(entry), entry["alg"])
    except (JOSEError, ValueError, TypeError):
        return None


class BrokerTokenVerifier:
    """``mcp.server.auth.provider.TokenVerifier`` for tokens minted by mcp-broker."""

    def __init__(
        self,
        *,
        issuer: str,
        resource: str,
        jwks: JwksCache,
        algorithms: Sequence[str] = ALLOWED_ALGORITHMS,
        leeway: int = 10,
        cache_size: int = 10_000,
        revocations: Revocations | None = None,
        fail_closed: bool = True,
        metrics: CacheMetrics | None = None,
    ) -> None:
        self.issuer = issuer
        self.resource = resource
        self.jwks = jwks
        self.algorithms = tuple(a for a in algorithms if a in ALLOWED_ALGORITHMS)
        self.leeway = leeway
        self._cache: dict[bytes, AccessToken] = {}
        self._cache_size = cache_size
        self.revocations = revocations
        self.fail_closed = fail_closed
        self.metrics = metrics
        self.hits = 0
        self.misses = 0

    def _revoked(self, access: AccessToken) -> bool:
        if self.revocations is None:
            return False
        if self.fail_closed and self.revocations.stale:
            return True  # cannot tell: refuse rather than honour a possibly revoked token
        sid = (access.claims or {}).get("sid")
        return isinstance(sid, str) and self.revocations.is_revoked(sid)

    async def verify_token(self, token: str) -> AccessToken | None:
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._cache.get(digest)
        if cached is not None:
            if cached.expires_at is not None and cached.expires_at + self.leeway > time.time():
                self.hits += 1
                if self.metrics is not None:
                    self.metrics.hit()
                return None if self._revoked(cached) else cached
            del self._cache[digest]
        self.misses += 1
        if self.metrics is not None:
            self.metrics.miss()
        claims = await self._verify(token)
        if claims is None:
            return None
        scope = claims.get("scope", "")
        access = AccessToken(
            token=token,
            client_id=str(claims["client_id"]),
            scopes=scope.split() if isinstance(scope, str) else [],
            expires_at=int(claims["exp"]),
            resource=self.resource,
            subject=str(claims["sub"]),
            claims=claims,
        )
        if len(self._cache) >= self._cache_size:
            self._cache.pop(next(iter(self._cache)))
        self._cache[digest] = access
        return None if self._revoked(access) else access

    async def _verify(self, token: str) -> dict[str, Any] | None:
        header = unverified_header(token)
        if header is None:
            return None
        alg, kid, typ = header.get("alg"), header.get("kid"), header.get("typ")
        if (
            alg not in self.algorithms
            or not isinstance(kid, str)
            or not isinstance(typ, str)
            or typ.lower() not in ("at+jwt", "application/at+jwt")
        ):
            return None
        key = await self.jwks.get(kid)
        if key is None:
            return None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.resource,
                issuer=self.issuer,
                options={
                    "leeway": self.leeway,
                    "require_aud": True,
                    "require_iss": True,
                    "require_exp": True,
                    "require_iat": True,
                    "require_sub": True,
                },
            )
        except JOSEError:
            return None
        if not isinstance(claims.get("client_id"), str) or "exp" not in claims:
            return None
        return claims
