"""The protected demo MCP server, wired in one place."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import structlog
from mcp.server.auth.provider import TokenVerifier
from mcp.server.auth.routes import create_protected_resource_routes
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from broker.middleware import RequestContextMiddleware
from mcp_app.guard import HostOriginGuard
from mcp_app.notes import NotesStore
from mcp_app.settings import McpAppSettings
from mcp_app.tools import SCOPES, TOOL_SCOPES, register_tools
from mcp_broker_verifier.auth import BearerGuard
from mcp_broker_verifier.cache_metrics import CacheMetrics
from mcp_broker_verifier.introspection import IntrospectionVerifier
from mcp_broker_verifier.redis_client import RedisClient, create_redis
from mcp_broker_verifier.revocations import RevocationWatcher
from mcp_broker_verifier.verifier import BrokerTokenVerifier, JwksCache

_log = structlog.get_logger("mcp_app")


def create_app(settings: McpAppSettings) -> Starlette:
    http = httpx.AsyncClient(follow_redirects=False)
    jwks = JwksCache(settings.effective_jwks_url, http)
    redis: RedisClient | None = (
        create_redis(
            settings.redis_url,
            password=settings.redis_password.get_secret_value() if settings.redis_password else None,
            sentinel_password=(
                settings.redis_sentinel_password.get_secret_value() if settings.redis_sentinel_password else None
            ),
            ca_file=settings.redis_ca_file,
            client_name="mcp-app",
        )
        if settings.redis_url
        else None
    )
    watcher = (
        RevocationWatcher(redis, key_prefix=settings.redis_key_prefix, max_staleness=settings.revocation_max_staleness)
        if redis is not None
        else None
    )
    metrics: CacheMetrics | None = None
    if settings.metrics_port:
        from mcp_app.metrics import PrometheusCacheMetrics  # prometheus_client: only when metrics are on

        metrics = PrometheusCacheMetrics()
    verifier: TokenVerifier
    if settings.verification == "introspection":
        assert settings.introspection_client_id
        assert settings.introspection_client_secret
        verifier = IntrospectionVerifier(
            endpoint=f"{settings.issuer}/introspect",
            client_id=settings.introspection_client_id,
            client_secret=settings.introspection_client_secret.get_secret_value(),
            resource=settings.resource_url,
            http=http,
            cache_seconds=settings.introspection_cache_seconds,
            metrics=metrics,
        )
        watcher = None  # the broker answers for revocations
    else:
        verifier = BrokerTokenVerifier(
            issuer=settings.issuer,
            resource=settings.resource_url,
            jwks=jwks,
            revocations=watcher,
            fail_closed=settings.fail_closed,
            metrics=metrics,
        )
    server = MCPServer(name="mcp-broker demo notes", instructions="A team notes server protected by mcp-broker.")
    notes = NotesStore(redis, f"{settings.redis_key_prefix}:notes") if redis is not None else None
    register_tools(server, notes, settings.scope_implies)

    resource = urlsplit(settings.resource_url)
    mcp_path = resource.path or "/mcp"
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[resource.netloc, *settings.allowed_hosts],
        allowed_origins=[f"{resource.scheme}://{resource.netloc}", *settings.allowed_origins],
    )
    mcp_asgi = server.streamable_http_app(
        streamable_http_path=mcp_path, stateless_http=True, json_response=True, transport_security=security
    )
    prm_routes = create_protected_resource_routes(
        resource_url=settings.resource_url,  # type: ignore[arg-type]
        authorization_servers=[settings.issuer],  # type: ignore[list-item]
        scopes_supported=SCOPES,
        resource_name="mcp-broker demo notes",
    )
    metadata_url = f"{resource.scheme}://{resource.netloc}{prm_routes[0].path}"

    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"}, headers={"cache-control": "no-store"})

    async def readyz(_: Request) -> JSONResponse:
        checks: dict[str, str] = {}
        if redis is not None:
            try:
                await asyncio.wait_for(redis.ping(), timeout=2.0)
                checks["redis"] = "ok"
            except Exception as exc:
                checks["redis"] = f"unreachable: {type(exc).__name__}"
        if settings.verification == "jwks" and not jwks.loaded:
            await jwks.refresh_if_due()  # rate-limited: probes cannot make it hammer the broker
            if not jwks.loaded and jwks.last_error:
                checks["signing_keys"] = f"broker JWKS unavailable: {jwks.last_error}"
        if settings.verification == "jwks":
            checks.setdefault("signing_keys", "ok" if jwks.loaded else "broker JWKS has no usable key")
        if watcher is not None:
            checks["revocations"] = "stale" if watcher.stale else "ok"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status_code=200 if ready else 503,
            headers={"cache-control": "no-store"},
        )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if watcher is not None:
            await watcher.start()
        await jwks.refresh_if_due()
        async with mcp_asgi.router.lifespan_context(mcp_asgi):
            _log.info("mcp_app_started", resource=settings.resource_url, issuer=settings.issuer)
            try:
                yield
            finally:
                if watcher is not None:
                    await watcher.stop()
                await http.aclose()
                if redis is not None:
                    await redis.aclose()

    guarded = BearerGuard(
        mcp_asgi,
        verifier=verifier,
        path=mcp_path.rstrip("/"),
        resource_metadata_url=metadata_url,
        scopes_supported=SCOPES,
        tool_scopes=TOOL_SCOPES,
        scope_implies=settings.scope_implies,
    )
    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            *prm_routes,
            Mount("/", app=guarded),
        ],
        lifespan=lifespan,
    )
    app.add_middleware(HostOriginGuard, allowed_hosts=security.allowed_hosts, allowed_origins=security.allowed_origins)
    app.add_middleware(RequestContextMiddleware, app_name="mcp_app")
    app.state.verifier = verifier
    app.state.watcher = watcher
    return app
