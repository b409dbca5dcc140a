"""Errors rendered once: RFC 6749 JSON for OAuth endpoints, never a stack trace, never a 500 for input."""

from __future__ import annotations

from http import HTTPMethod

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from broker.oauth.errors import (
    InvalidClient,
    InvalidRequest,
    OAuthError,
    ServerError,
    TemporarilyUnavailable,
    TooManyRequests,
)

_log = structlog.get_logger("mcp_broker.errors")
NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}


def oauth_error_response(exc: OAuthError, *, basic_challenge: bool = False) -> JSONResponse:
    headers = dict(NO_STORE)
    if isinstance(exc, InvalidClient) and basic_challenge:
        headers["www-authenticate"] = 'Basic realm="mcp-broker", charset="UTF-8"'
    if isinstance(exc, TooManyRequests):
        headers["retry-after"] = str(exc.retry_after)
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def _allowed_methods(request: Request) -> str:
    """Every method the path takes (RFC 9110 §15.5.6). Starlette's 405 names only those of the
    first route whose path matched, and one path may be several routes (GET and DELETE)."""
    scope = request.scope
    allowed = []
    for method in sorted(HTTPMethod):
        probe = {"type": "http", "path": scope["path"], "root_path": scope.get("root_path", ""), "method": method}
        if any(route.matches(probe)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method.value)
    return ", ".join(allowed)


def install(app: FastAPI) -> None:
    @app.exception_handler(OAuthError)
    async def _oauth(request: Request, exc: OAuthError) -> JSONResponse:
        _log.info("oauth_error", path=request.url.path, error=exc.error, detail=exc.detail)
        return oauth_error_response(exc, basic_challenge="authorization" in request.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return oauth_error_response(InvalidRequest())

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = {
            "error": "not_found" if exc.status_code == 404 else "invalid_request",
            "error_description": str(exc.detail),
        }
        headers = {**NO_STORE, **{k.lower(): v for k, v in (exc.headers or {}).items()}}
        if exc.status_code == 405:
            headers["allow"] = _allowed_methods(request)
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RedisError)
    async def _redis(request: Request, exc: RedisError) -> JSONResponse:
        # Redis unreachable or failing over: a retry soon will work (refresh retries are safe
        # within the reuse grace window).
        _log.error("redis_unavailable", path=request.url.path, error=f"{type(exc).__name__}: {exc}")
        response = oauth_error_response(TemporarilyUnavailable())
        response.headers["retry-after"] = "2"
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        _log.exception("unhandled_error", path=request.url.path)
        return oauth_error_response(ServerError())
