"""The scope hierarchy is configuration: the guard's 403 and the tools both follow it."""

from __future__ import annotations

import json

import httpx
import pytest
from mcp.server.auth.provider import AccessToken
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mcp_app.settings import McpAppSettings
from mcp_broker_verifier.auth import BearerGuard
from mcp_broker_verifier.scopes import effective_scopes


def test_implied_scopes_follow_the_hierarchy_through_every_level() -> None:
    implies = {"admin": ["notes:write"], "notes:write": ["notes:read"]}
    assert effective_scopes(["admin"], implies) == {"admin", "notes:write", "notes:read"}
    assert effective_scopes(["notes:read"], implies) == {"notes:read"}
    assert effective_scopes(["notes:write"], {}) == {"notes:write"}
    assert effective_scopes(["a"], {"a": ["b"], "b": ["a"]}) == {"a", "b"}  # a loop ends


def test_the_default_hierarchy_is_the_demos(monkeypatch: pytest.MonkeyPatch) -> None:
    assert McpAppSettings().scope_implies == {"notes:write": ["notes:read"]}
    monkeypatch.setenv("MCP_APP_SCOPE_IMPLIES", json.dumps({"notes:admin": ["notes:write", "notes:read"]}))
    assert McpAppSettings().scope_implies == {"notes:admin": ["notes:write", "notes:read"]}


class _Granted:
    """A verifier that accepts the one token it was given, with these scopes."""

    def __init__(self, scopes: list[str]) -> None:
        self.scopes = scopes

    async def verify_token(self, token: str) -> AccessToken | None:
        return AccessToken(token=token, client_id="c1", scopes=self.scopes) if token == "t" else None


async def _call_tool(guard: BearerGuard, tool: str) -> int:
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool}}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://mcp.test") as client:
        response = await client.post("/mcp", json=message, headers={"authorization": "Bearer t"})
    return response.status_code


@pytest.mark.parametrize(
    ("implies", "status"), [({"notes:write": ["notes:read"]}, 200), ({}, 403), ({"notes:write": []}, 403)]
)
async def test_the_guard_follows_the_configured_hierarchy(implies: dict[str, list[str]], status: int) -> None:
    async def tool(_: Request) -> JSONResponse:
        return JSONResponse({"jsonrpc": "2.0", "id": 1, "result": {}})

    guard = BearerGuard(
        Starlette(routes=[Route("/mcp", tool, methods=["POST"])]),
        verifier=_Granted(["notes:write"]),
        path="/mcp",
        resource_metadata_url="https://mcp.example.com/.well-known/oauth-protected-resource/mcp",
        scopes_supported=["notes:read", "notes:write"],
        tool_scopes={"list_notes": "notes:read"},
        scope_implies=implies,
    )
    assert await _call_tool(guard, "list_notes") == status
