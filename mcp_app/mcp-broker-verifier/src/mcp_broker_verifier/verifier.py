"""Verify the broker's access tokens locally: the MCP SDK ``TokenVerifier`` any MCP server reuses.

RFC 9068 JWTs checked against the broker's JWKS (fetched once, cached, refetched on an
unknown ``kid`` and after ``max_age``, never more than once per ``min_refetch_interval`` seconds
whether the fetch works or not, once a second while no key is known), with explicit algorithms,
``typ: at+jwt``, ``iss``, ``aud`` equal to this server's canonical URI (RFC 8707), and
``exp``/``nbf`` with a small leeway. Verified tokens are cached by hash until they expire.
A token must first be a compact JWS in canonical base64url (RFC 7515 §2, RFC 4648 §5): one
spelling per token, so no padded or bit-flipped copy of a token verifies as the original.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Sequence
from typing import Any, Protocol

import httpx
from jose import jwk, jwt
from jose.backends.base import Key
from jose.exceptions import JOSEError
from mcp.server.auth.provider import AccessToken

from mcp_broker_verifier.cache_metrics import CacheMetrics
from mcp_broker_verifier.jws import is_canonical_jws

ALLOWED_ALGORITHMS = ("ES256", "RS256")


class Revocations(Protocol):
    """What the verifier needs to know about revoked grants (see ``mcp_broker_verifier.revocations``)."""

    @property
    def stale(self) -> bool: ...

    def is_revoked(self, grant_id: str) -> bool: ...


class JwksCache:
    def __init__(
        self, url: str, http: httpx.AsyncClient, *, min_refetch_interval: float = 30.0, max_age: float = 3600.0
    ) -> None:
        self.url = url
        self._http = http
        self._keys: dict[str, Key] = {}
        self._fetched_at = 0.0
        self._attempted_at = -1e9
        self._min_interval = min_refetch_interval
        self._max_age = max_age
        self._lock = asyncio.Lock()
        self.last_error: str | None = None

    @property
    def loaded(self) -> bool:
        return bool(self._keys)

    async def refresh(self) -> None:
        """Fetch the JWKS now; raise ``httpx.HTTPError`` or ``ValueError`` if it cannot be had."""
        self._attempted_at = time.monotonic()
        try:
            response = await self._http.get(self.url, timeout=5.0)
            response.raise_for_status()
            document = response.json()
            if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
                raise ValueError("not a JWK set")
        except (httpx.HTTPError, ValueError) as exc:
            self.last_error = type(exc).__name__
            raise
        keys: dict[str, Key] = {}
        for entry in document["keys"]:
            if not isinstance(entry, dict):
                continue
            alg, kid = entry.get("alg"), entry.get("kid")
            if alg in ALLOWED_ALGORITHMS and isinstance(kid, str) and entry.get("use", "sig") == "sig":
                try:
                    keys[kid] = jwk.construct(entry, alg)
                except (JOSEError, ValueError, TypeError):
                    continue  # one malformed key does not take the others down
        self._keys = keys
        self._fetched_at = time.monotonic()
        self.last_error = None

    def _due(self) -> bool:
        # Rate-limited on attempts, not successes: a failing JWKS is not asked on every request.
        interval = self._min_interval if self._keys else 1.0
        return time.monotonic() - self._attempted_at >= interval

    async def refresh_if_due(self) -> None:
        """Refresh unless one was tried too recently; errors stay in ``last_error``."""
        async with self._lock:
            if self._due():
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    await self.refresh()

    async def get(self, kid: str) -> Key | None:
        key = self._keys.get(kid)
        if key is not None and time.monotonic() - self._fetched_at < self._max_age:
            return key
        # An unknown kid (a key rotated in), or keys past their age (a key may have been pulled).
        await self.refresh_if_due()
        return self._keys.get(kid)


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
        if not is_canonical_jws(token):
            return None
        try:
            header = jwt.get_unverified_header(token)
        except JOSEError:
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
