"""The protected demo MCP server, wired in one place."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httpx
import structlog
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse

from broker.middleware import RequestContextMiddleware
from broker.store.client import RedisClient, create_redis
from mcp_app.guard import HostOriginGuard
from mcp_app.settings import McpAppSettings
from mcp_app.verifier import BrokerTokenVerifier, JwksCache

_log = structlog.get_logger("mcp_app")


def create_app(settings: McpAppSettings) -> Starlette:
    http = httpx.AsyncClient(follow_redirects=False)
    jwks = JwksCache(settings.effective_jwks_url, http)
    verifier = BrokerTokenVerifier(issuer=settings.issuer, resource=settings.resource_url, jwks=jwks)
    redis: RedisClient | None = (
        create_redis(
            settings.redis_url,
            password=settings.redis_password.get_secret_value() if settings.redis_password else None,
            client_name="mcp-app",
        )
        if settings.redis_url
        else None
    )

    server = MCPServer(
        name="mcp-broker demo notes",
        instructions="A team notes server protected by mcp-broker.",
        token_verifier=verifier,
        auth=AuthSettings(
            issuer_url=settings.issuer,
            resource_server_url=settings.resource_url,
            validate_token_resource=True,
        ),
    )

    @server.tool(description="Who the server thinks you are: subject, client, scopes, token expiry.")
    async def whoami() -> dict[str, object]:
        token = get_access_token()
        if token is None:
            return {"authenticated": False}
        return {
            "subject": token.subject,
            "client_id": token.client_id,
            "scopes": token.scopes,
            "expires_at": token.expires_at,
        }

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
        if not jwks.loaded:
            try:
                await jwks.refresh()
            except (httpx.HTTPError, ValueError) as exc:
                checks["signing_keys"] = f"broker JWKS unavailable: {type(exc).__name__}"
        checks.setdefault("signing_keys", "ok" if jwks.loaded else "broker JWKS has no usable key")
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status_code=200 if ready else 503,
            headers={"cache-control": "no-store"},
        )

    netloc = urlsplit(settings.resource_url).netloc
    origin = f"{urlsplit(settings.resource_url).scheme}://{netloc}"
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[netloc, *settings.allowed_hosts],
        allowed_origins=[origin, *settings.allowed_origins],
    )
    app = server.streamable_http_app(
        streamable_http_path=urlsplit(settings.resource_url).path or "/mcp",
        stateless_http=True,
        json_response=True,
        transport_security=security,
        host=settings.host,
    )
    app.add_route("/healthz", healthz, methods=["GET"], include_in_schema=False)
    app.add_route("/readyz", readyz, methods=["GET"], include_in_schema=False)
    app.add_middleware(HostOriginGuard, allowed_hosts=security.allowed_hosts, allowed_origins=security.allowed_origins)
    app.add_middleware(RequestContextMiddleware)
    return app
