"""ASGI middleware shared by the broker and mcp_app: request ids, request log lines, and
security headers. Pure ASGI (no BaseHTTPMiddleware) so it adds microseconds, not a task."""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

import structlog
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker.metrics import HTTP_DURATION, HTTP_REQUESTS

REQUEST_ID_HEADER = "x-request-id"
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_log = structlog.get_logger("mcp_broker.http")


class RequestContextMiddleware:
    """Give every request an id (the caller's X-Request-ID when well-formed), bind it to every
    log line of the request, echo it in the response, and log one line per request with the
    path only (never the query string, which can hold codes)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        quiet_paths: frozenset[str] = frozenset({"/healthz", "/readyz"}),
        app_name: str = "broker",
    ):
        self.app = app
        self.quiet_paths = quiet_paths
        self.app_name = app_name
        # Each label set's metric children, looked up once (labels() takes a lock and builds keys).
        self._metrics: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = incoming if incoming and _VALID_ID.match(incoming) else secrets.token_hex(8)
        scope.setdefault("state", {})["request_id"] = request_id
        status: dict[str, Any] = {"code": 500}
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            path = scope.get("path", "")
            elapsed = time.perf_counter() - start
            count, duration = self._children(str(scope.get("method", "")), _route_label(scope), status["code"])
            count.inc()
            duration.observe(elapsed)
            if path not in self.quiet_paths or status["code"] >= 400:
                _log.info(
                    "http_request",
                    method=scope.get("method"),
                    path=path,
                    status=status["code"],
                    duration_ms=round(elapsed * 1000, 2),
                )
            structlog.contextvars.unbind_contextvars("request_id")

    def _children(self, method: str, route: str, code: int) -> tuple[Counter, Histogram]:
        key = (method, route, code)
        children = self._metrics.get(key)
        if children is None:
            if len(self._metrics) >= 10_000:  # methods are free text: keep the memo bounded
                self._metrics.clear()
            children = self._metrics[key] = (
                HTTP_REQUESTS.labels(self.app_name, method, route, str(code)),
                HTTP_DURATION.labels(self.app_name, route),
            )
        return children


def _route_label(scope: Scope) -> str:
    """The matched route template (bounded cardinality), never the raw path."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    if isinstance(template, str):
        return template
    path = str(scope.get("path", ""))
    if path.startswith("/.well-known/"):
        return "/.well-known/*"
    return path if path in ("/mcp", "/healthz", "/readyz") else "other"
