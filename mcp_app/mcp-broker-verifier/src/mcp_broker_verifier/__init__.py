"""Verify mcp-broker's access tokens in any MCP server (the ``mcp-broker-verifier`` distribution).

The whole integration is one call::

    from mcp_broker_verifier import protect

    app = protect(server, issuer="https://broker.example.com", resource="https://notes.example.com/mcp",
                  tool_scopes={"add_note": "notes:write"}, redis_url="redis://broker-redis:6379")

The parts, for a server that assembles its own app: :class:`ProtectedServer` (what ``protect``
builds), :class:`BrokerTokenVerifier` and :class:`JwksCache` (RFC 9068 JWTs against the
broker's keys), :class:`IntrospectionVerifier` (RFC 7662, for a server without Redis),
:class:`RevocationWatcher` (revoked grants from the broker's Redis), :class:`BearerGuard`
(401/403 with scopes per tool) and :class:`HostOriginGuard` (DNS-rebinding protection).
:class:`TokenExchanger` (``delegation``) trades the request's token for a token of a downstream
API the broker knows as a delegation target (RFC 8693).

The names load on first use: the broker imports a few leaf modules of this package (the
revocation keys, the Redis client, the scope rule) and so loads neither the MCP server nor
Starlette with them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mcp_broker_verifier.auth import BearerGuard
    from mcp_broker_verifier.cache_metrics import CacheMetrics
    from mcp_broker_verifier.delegation import TokenExchanger
    from mcp_broker_verifier.guard import HostOriginGuard
    from mcp_broker_verifier.introspection import IntrospectionVerifier
    from mcp_broker_verifier.protection import ProtectedServer, default_jwks_url, protect
    from mcp_broker_verifier.redis_client import create_redis
    from mcp_broker_verifier.revocations import RevocationWatcher
    from mcp_broker_verifier.scopes import ScopeImplies, effective_scopes
    from mcp_broker_verifier.verifier import BrokerTokenVerifier, JwksCache

_HOMES = {
    "BearerGuard": "auth",
    "BrokerTokenVerifier": "verifier",
    "CacheMetrics": "cache_metrics",
    "HostOriginGuard": "guard",
    "IntrospectionVerifier": "introspection",
    "JwksCache": "verifier",
    "ProtectedServer": "protection",
    "RevocationWatcher": "revocations",
    "ScopeImplies": "scopes",
    "TokenExchanger": "delegation",
    "create_redis": "redis_client",
    "default_jwks_url": "protection",
    "effective_scopes": "scopes",
    "protect": "protection",
}
__all__ = [
    "BearerGuard",
    "BrokerTokenVerifier",
    "CacheMetrics",
    "HostOriginGuard",
    "IntrospectionVerifier",
    "JwksCache",
    "ProtectedServer",
    "RevocationWatcher",
    "ScopeImplies",
    "TokenExchanger",
    "create_redis",
    "default_jwks_url",
    "effective_scopes",
    "protect",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
