"""The protected demo MCP server, wired in one place."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator

import httpx
import structlog
from mcp.server.auth.provider import TokenVerifier
from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from broker.middleware import RequestContextMiddleware
from mcp_app.downstream import DownstreamCaller, demo_api
from mcp_app.notes import NotesStore
from mcp_app.settings import McpAppSettings
from mcp_app.tools import SCOPES, TOOL_SCOPES, register_tools
from mcp_broker_verifier.cache_metrics import CacheMetrics
from mcp_broker_verifier.delegation import TokenExchanger
from mcp_broker_verifier.guard import HostOriginGuard
from mcp_broker_verifier.introspection import IntrospectionVerifier
from mcp_broker_verifier.protection import ProtectedServer
from mcp_broker_verifier.redis_client import RedisClient, create_redis
from mcp_broker_verifier.verifier import BrokerTokenVerifier, JwksCache

_log = structlog.get_logger("mcp_app")


def create_app(settings: McpAppSettings) -> Starlette:
    http = httpx.AsyncClient(follow_redirects=False)
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
    metrics: CacheMetrics | None = None
    if settings.metrics_port:
        from mcp_app.metrics import PrometheusCacheMetrics  # prometheus_client: only when metrics are on

        metrics = PrometheusCacheMetrics()
    verifier: TokenVerifier | None = None  # None: the JWKS verifier, with revocations from Redis
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
        )  # the broker answers for revocations: no watcher
    server = MCPServer(name="mcp-broker demo notes", instructions="A team notes server protected by mcp-broker.")
    notes = NotesStore(redis, f"{settings.redis_key_prefix}:notes") if redis is not None else None
    downstream_http: httpx.AsyncClient | None = None
    downstream: DownstreamCaller | None = None
    if settings.downstreams:
        assert settings.delegation_client_id
        assert settings.delegation_client_secret
        downstream_http = httpx.AsyncClient(
            follow_redirects=False, timeout=15.0, verify=_tls(settings.downstream_ca_file)
        )
        exchanger = TokenExchanger(
            token_endpoint=f"{settings.issuer}/token",
            client_id=settings.delegation_client_id,
            client_secret=settings.delegation_client_secret.get_secret_value(),
            http=http,
        )
        downstream = DownstreamCaller(exchanger, dict(settings.downstreams), downstream_http)
    register_tools(server, notes, settings.scope_implies, downstream)
    protected = ProtectedServer(
        server,
        issuer=settings.issuer,
        resource=settings.resource_url,
        http=http,
        tool_scopes=TOOL_SCOPES,
        scope_implies=settings.scope_implies,
        scopes_supported=SCOPES,
        jwks_url=settings.effective_jwks_url,
        redis=redis,
        redis_key_prefix=settings.redis_key_prefix,
        revocation_max_staleness=settings.revocation_max_staleness,
        fail_closed=settings.fail_closed,
        metrics=metrics,
        verifier=verifier,
        allowed_hosts=settings.allowed_hosts,
        allowed_origins=settings.allowed_origins,
        resource_name="mcp-broker demo notes",
    )
    jwks, watcher = protected.jwks, protected.watcher
    extra_routes: list[Route] = []
    if settings.demo_api_audience:  # the internal demo API: broker-minted tokens for its audience
        demo_verifier = BrokerTokenVerifier(
            issuer=settings.issuer,
            resource=settings.demo_api_audience,
            jwks=jwks or JwksCache(settings.effective_jwks_url, http),
            revocations=watcher,
            fail_closed=settings.fail_closed,
        )
        extra_routes.append(Route("/demo-api/whoami", demo_api(demo_verifier), methods=["GET"]))

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
        if jwks is not None and not jwks.loaded:
            await jwks.refresh_if_due()  # rate-limited: probes cannot make it hammer the broker
            if not jwks.loaded and jwks.last_error:
                checks["signing_keys"] = f"broker JWKS unavailable: {jwks.last_error}"
        if jwks is not None:
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
        try:
            async with protected.lifespan():
                _log.info("mcp_app_started", resource=settings.resource_url, issuer=settings.issuer)
                yield
        finally:
            await http.aclose()
            if downstream_http is not None:
                await downstream_http.aclose()
            if redis is not None:
                await redis.aclose()

    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            *extra_routes,
            *protected.routes,
        ],
        lifespan=lifespan,
    )
    app.add_middleware(HostOriginGuard, **protected.middleware_kwargs())
    app.add_middleware(RequestContextMiddleware, app_name="mcp_app")
    app.state.verifier = protected.verifier
    app.state.watcher = watcher
    return app


def _tls(ca_file: str | None) -> ssl.SSLContext | bool:
    return ssl.create_default_context(cafile=ca_file) if ca_file else True
