"""Bearer authentication for the MCP endpoint, with per-tool scopes (RFC 6750, RFC 9728, MCP).

* No or bad token: 401 with ``WWW-Authenticate: Bearer resource_metadata=..., scope=...``.
* A ``tools/call`` for a tool whose scope the token lacks (after the configured scope hierarchy,
  ``scope_implies``): 403 with
  ``error="insufficient_scope"`` and ``scope`` = the token's scopes plus the missing one, the
  union the client asks for when it steps up.
* Otherwise the request proceeds with the SDK's auth context set, so tools can read the token.

The token is never echoed in an answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pydantic_core
from mcp.server.auth.middleware.auth_context import AuthContextMiddleware
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import TokenVerifier
from starlette.authentication import AuthCredentials
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_broker_verifier.scopes import ScopeImplies, effective_scopes

MAX_BODY = 1024 * 1024


def _challenge(params: Mapping[str, str]) -> bytes:
    return ("Bearer " + ", ".join(f'{k}="{v}"' for k, v in params.items())).encode()


class BearerGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        verifier: TokenVerifier,
        path: str,
        resource_metadata_url: str,
        scopes_supported: list[str],
        tool_scopes: Mapping[str, str],
        scope_implies: ScopeImplies | None = None,
    ) -> None:
        self.app = AuthContextMiddleware(app)
        self.plain = app
        self.verifier = verifier
        self.path = path
        self.metadata_url = resource_metadata_url
        self.scopes_supported = scopes_supported
        self.tool_scopes = dict(tool_scopes)
        self.scope_implies: ScopeImplies = dict(scope_implies or {})

    async def _deny(self, send: Send, status: int, params: dict[str, str], body: dict[str, str]) -> None:
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"www-authenticate", _challenge(params)),
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") != self.path:
            await self.plain(scope, receive, send)
            return
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        kind, _, token = (header or b"").decode("latin-1").partition(" ")
        access = await self.verifier.verify_token(token.strip()) if kind.lower() == "bearer" and token else None
        if access is None:
            params = {"resource_metadata": self.metadata_url, "scope": " ".join(self.scopes_supported)}
            if header is not None:
                params = {
                    "error": "invalid_token",
                    "error_description": "The access token is invalid, expired or revoked",
                    **params,
                }
            await self._deny(
                send,
                401,
                params,
                {"error": params.get("error", "invalid_request"), "error_description": "Authentication required"},
            )
            return
        if scope["method"] == "POST" and self.tool_scopes:
            body, receive = await _buffer(receive)
            if body is None:
                await self._deny(send, 413, {"error": "invalid_request"}, {"error": "request_too_large"})
                return
            needed = self._needed_scope(body)
            if needed is not None and needed not in effective_scopes(access.scopes, self.scope_implies):
                union = " ".join(sorted({*access.scopes, needed}))
                await self._deny(
                    send,
                    403,
                    {
                        "error": "insufficient_scope",
                        "scope": union,
                        "resource_metadata": self.metadata_url,
                        "error_description": f"This tool requires the {needed} scope",
                    },
                    {"error": "insufficient_scope", "error_description": f"This tool requires the {needed} scope"},
                )
                return
        scope["user"] = AuthenticatedUser(access)
        scope["auth"] = AuthCredentials(access.scopes)
        await self.app(scope, receive, send)

    def _needed_scope(self, body: bytes) -> str | None:
        # Parsed every time: a byte search for "tools/call" would miss "tools\/call" and other
        # escapes JSON allows, and such a call would skip the 403 step-up challenge. Parsed by
        # the SDK transport's own parser, so both read the same message, and nesting deeper than
        # its limit is a ValueError here (json.loads raised RecursionError: a 500) and a JSON-RPC
        # parse error there.
        try:
            message: Any = pydantic_core.from_json(body)
        except ValueError:
            return None
        if not isinstance(message, dict) or message.get("method") != "tools/call":
            return None
        params = message.get("params")
        name = params.get("name") if isinstance(params, dict) else None
        return self.tool_scopes.get(name) if isinstance(name, str) else None


async def _buffer(receive: Receive) -> tuple[bytes | None, Receive]:
    """Read the whole body (bounded) and hand back a receive that replays it."""
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None, receive
        chunks.append(chunk)
        more = message.get("more_body", False)
    body = b"".join(chunks)
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay
