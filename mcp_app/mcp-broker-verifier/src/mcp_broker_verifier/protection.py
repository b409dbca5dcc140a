"""An MCP server behind mcp-broker's access tokens, in one call.

:func:`protect` takes an ``MCPServer`` and answers an ASGI app (Starlette) that serves

* the MCP endpoint (streamable HTTP, at the path of ``resource``) behind :class:`BearerGuard`:
  no or bad token → 401 with ``WWW-Authenticate: Bearer resource_metadata=...``; a
  ``tools/call`` whose tool needs a scope the token lacks → 403 ``insufficient_scope``;
* the protected resource metadata (RFC 9728) naming the broker as the authorization server;

with tokens checked against the broker's JWKS (``<issuer>/jwks.json``, the broker's
``jwks_uri``), revocations followed through the broker's Redis when ``redis_url`` is given, and
a foreign ``Host`` or ``Origin`` refused before anything else runs (:class:`HostOriginGuard`).

:class:`ProtectedServer` holds the same pieces for a server that adds routes of its own or
owns its Redis client and HTTP client (the demo server in ``mcp_app`` is one).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from urllib.parse import urlsplit

import httpx
from mcp.server.auth.provider import TokenVerifier
from mcp.server.auth.routes import create_protected_resource_routes
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount

from mcp_broker_verifier.auth import BearerGuard
from mcp_broker_verifier.cache_metrics import CacheMetrics
from mcp_broker_verifier.guard import HostOriginGuard
from mcp_broker_verifier.redis_client import RedisClient, create_redis
from mcp_broker_verifier.revocations import RevocationWatcher
from mcp_broker_verifier.scopes import ScopeImplies
from mcp_broker_verifier.verifier import BrokerTokenVerifier, JwksCache


def default_jwks_url(issuer: str) -> str:
    """Where the broker publishes its signing keys (its metadata's ``jwks_uri``)."""
    return f"{issuer.rstrip('/')}/jwks.json"


class ProtectedServer:
    """The parts of a protected MCP server: verifier, JWKS cache, revocation watcher, routes.

    Nothing here opens or closes ``http`` or ``redis``: their owner does. ``verifier`` replaces
    the JWKS verifier (e.g. :class:`~mcp_broker_verifier.introspection.IntrospectionVerifier`);
    then no JWKS cache or revocation watcher is made, the verifier answers for both.
    """

    def __init__(
        self,
        server: MCPServer,
        *,
        issuer: str,
        resource: str,
        http: httpx.AsyncClient,
        tool_scopes: Mapping[str, str] | None = None,
        scope_implies: ScopeImplies | None = None,
        scopes_supported: Sequence[str] | None = None,
        jwks_url: str | None = None,
        redis: RedisClient | None = None,
        redis_key_prefix: str = "mcpb",
        revocation_max_staleness: float = 30.0,
        fail_closed: bool = True,
        metrics: CacheMetrics | None = None,
        verifier: TokenVerifier | None = None,
        allowed_hosts: Sequence[str] = (),
        allowed_origins: Sequence[str] = (),
        resource_name: str | None = None,
    ) -> None:
        tool_scopes = dict(tool_scopes or {})
        self.scopes_supported = list(scopes_supported or sorted(set(tool_scopes.values())))
        self.jwks: JwksCache | None = None
        self.watcher: RevocationWatcher | None = None
        if verifier is None:
            self.jwks = JwksCache(jwks_url or default_jwks_url(issuer), http)
            if redis is not None:
                self.watcher = RevocationWatcher(
                    redis, key_prefix=redis_key_prefix, max_staleness=revocation_max_staleness
                )
            verifier = BrokerTokenVerifier(
                issuer=issuer,
                resource=resource,
                jwks=self.jwks,
                revocations=self.watcher,
                fail_closed=fail_closed,
                metrics=metrics,
            )
        self.verifier: TokenVerifier = verifier

        parts = urlsplit(resource)
        mcp_path = parts.path or "/mcp"
        self.security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=[parts.netloc, *allowed_hosts],
            allowed_origins=[f"{parts.scheme}://{parts.netloc}", *allowed_origins],
        )
        self.mcp_app = server.streamable_http_app(
            streamable_http_path=mcp_path, stateless_http=True, json_response=True, transport_security=self.security
        )
        metadata_routes = create_protected_resource_routes(
            resource_url=resource,  # type: ignore[arg-type]
            authorization_servers=[issuer],  # type: ignore[list-item]
            scopes_supported=self.scopes_supported,
            resource_name=resource_name or server.name,
        )
        self.metadata_url = f"{parts.scheme}://{parts.netloc}{metadata_routes[0].path}"
        guarded = BearerGuard(
            self.mcp_app,
            verifier=self.verifier,
            path=mcp_path.rstrip("/"),
            resource_metadata_url=self.metadata_url,
            scopes_supported=self.scopes_supported,
            tool_scopes=tool_scopes,
            scope_implies=scope_implies,
        )
        self.routes: list[BaseRoute] = [*metadata_routes, Mount("/", app=guarded)]

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Follow revocations, fetch the broker's keys, run the MCP server's own lifespan."""
        if self.watcher is not None:
            await self.watcher.start()
        try:
            if self.jwks is not None:
                await self.jwks.refresh_if_due()  # a broker not up yet is retried on the first token
            async with self.mcp_app.router.lifespan_context(self.mcp_app):
                yield
        finally:
            if self.watcher is not None:
                await self.watcher.stop()

    def middleware_kwargs(self) -> dict[str, list[str]]:
        """The Host and Origin values :class:`HostOriginGuard` accepts: those of the transport."""
        return {"allowed_hosts": self.security.allowed_hosts, "allowed_origins": self.security.allowed_origins}


def protect(
    server: MCPServer,
    *,
    issuer: str,
    resource: str,
    tool_scopes: Mapping[str, str] | None = None,
    scope_implies: ScopeImplies | None = None,
    scopes_supported: Sequence[str] | None = None,
    jwks_url: str | None = None,
    redis_url: str | None = None,
    redis_key_prefix: str = "mcpb",
    redis_ca_file: str | None = None,
    revocation_max_staleness: float = 30.0,
    fail_closed: bool = True,
    metrics: CacheMetrics | None = None,
    allowed_hosts: Sequence[str] = (),
    allowed_origins: Sequence[str] = (),
    resource_name: str | None = None,
) -> Starlette:
    """``server`` behind mcp-broker: an ASGI app to run with any ASGI server (uvicorn).

    ``issuer``: the broker's issuer URL. ``resource``: this server's canonical URI, the audience
    its tokens must carry, whose path is the MCP endpoint. ``tool_scopes``: the scope each tool
    needs; ``scope_implies``: the scope hierarchy (``{"notes:write": ["notes:read"]}``), the
    same as the broker's ``implies``. ``redis_url``: the broker's Redis (and ``redis_key_prefix``
    its ``redis.key_prefix``), to refuse a revoked grant's tokens within a second; without it a
    token stays valid until it expires. While Redis cannot be heard for
    ``revocation_max_staleness`` seconds every token is refused, unless ``fail_closed`` is off.
    ``metrics``: told of each verification-cache hit and miss.
    """
    http = httpx.AsyncClient(follow_redirects=False)
    redis = create_redis(redis_url, ca_file=redis_ca_file, client_name="mcp-broker-verifier") if redis_url else None
    protected = ProtectedServer(
        server,
        issuer=issuer,
        resource=resource,
        http=http,
        tool_scopes=tool_scopes,
        scope_implies=scope_implies,
        scopes_supported=scopes_supported,
        jwks_url=jwks_url,
        redis=redis,
        redis_key_prefix=redis_key_prefix,
        revocation_max_staleness=revocation_max_staleness,
        fail_closed=fail_closed,
        metrics=metrics,
        allowed_hosts=allowed_hosts,
        allowed_origins=allowed_origins,
        resource_name=resource_name,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            async with protected.lifespan():
                yield
        finally:
            await http.aclose()
            if redis is not None:
                await redis.aclose()

    app = Starlette(routes=protected.routes, lifespan=lifespan)
    app.add_middleware(HostOriginGuard, **protected.middleware_kwargs())
    app.state.protected = protected
    return app
