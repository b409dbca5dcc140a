"""Token introspection (RFC 7662) as the verifier, for MCP servers that cannot reach Redis.

Each unknown token is sent to the broker's introspection endpoint with this server's client
credentials; an active answer for this server's resource is cached for a few seconds (never
past the token's expiry), so revocation takes effect within ``cache_seconds``.
"""

from __future__ import annotations

import hashlib
import time

import httpx
import structlog
from mcp.server.auth.provider import AccessToken

from mcp_broker_verifier.cache_metrics import CacheMetrics

_log = structlog.get_logger("mcp_broker_verifier.introspection")


class IntrospectionVerifier:
    """``mcp.server.auth.provider.TokenVerifier`` that asks the broker about every token."""

    def __init__(
        self,
        *,
        endpoint: str,
        client_id: str,
        client_secret: str,
        resource: str,
        http: httpx.AsyncClient,
        cache_seconds: float = 5.0,
        cache_size: int = 10_000,
        metrics: CacheMetrics | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.auth = (client_id, client_secret)
        self.resource = resource
        self.http = http
        self.cache_seconds = cache_seconds
        self.cache_size = cache_size
        self.metrics = metrics
        self._cache: dict[bytes, tuple[float, AccessToken]] = {}

    async def verify_token(self, token: str) -> AccessToken | None:
        digest = hashlib.sha256(token.encode()).digest()
        now = time.time()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            if self.metrics is not None:
                self.metrics.hit()
            return cached[1]
        if self.metrics is not None:
            self.metrics.miss()
        try:
            response = await self.http.post(self.endpoint, data={"token": token}, auth=self.auth, timeout=5.0)
        except httpx.HTTPError as exc:
            _log.warning("introspection_unreachable", error=type(exc).__name__)
            return None  # fail closed
        if response.status_code != 200:
            _log.warning("introspection_refused", status=response.status_code)
            return None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):  # a proxy's error page, say: not an answer, so not active
            _log.warning("introspection_unreadable", content_type=response.headers.get("content-type"))
            return None
        if (
            body.get("active") is not True
            or body.get("aud") != self.resource
            or body.get("token_type") != "Bearer"
            or not isinstance(body.get("exp"), int)
            or body["exp"] <= now
        ):
            return None
        access = AccessToken(
            token=token,
            client_id=str(body.get("client_id")),
            scopes=str(body.get("scope", "")).split(),
            expires_at=body["exp"],
            resource=self.resource,
            subject=str(body.get("sub")),
            claims=body,
        )
        if len(self._cache) >= self.cache_size:
            self._cache.pop(next(iter(self._cache)))
        self._cache[digest] = (min(now + self.cache_seconds, body["exp"]), access)
        return access
