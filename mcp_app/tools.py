"""The demo tools, each declaring the scope it needs."""

from __future__ import annotations

from typing import Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import InputRequiredResult

from mcp_app.downstream import DownstreamCaller
from mcp_app.notes import NoteError, NotesStore
from mcp_broker_verifier.scopes import ScopeImplies, effective_scopes

READ, WRITE = "notes:read", "notes:write"
SCOPES = [READ, WRITE]
TOOL_SCOPES = {
    "list_notes": READ,
    "read_note": READ,
    "create_note": WRITE,
    "delete_note": WRITE,
    "call_downstream": READ,
}


def _require(scope: str, implies: ScopeImplies) -> AccessToken:
    token = get_access_token()
    if token is None:
        raise ToolError("not authenticated")
    if scope not in effective_scopes(token.scopes, implies):
        raise ToolError(f"this tool requires the {scope} scope; ask your MCP client to request it")
    return token


def _author(token: AccessToken) -> str:
    return str((token.claims or {}).get("sub") or token.subject or "unknown")


def register_tools(
    server: MCPServer,
    notes: NotesStore | None,
    scope_implies: ScopeImplies,
    downstream: DownstreamCaller | None = None,
) -> None:
    @server.tool(description="Who the server thinks you are: subject, client, scopes and token expiry.")
    async def whoami() -> dict[str, Any]:
        token = get_access_token()
        if token is None:
            raise ToolError("not authenticated")
        return {
            "subject": token.subject,
            "client_id": token.client_id,
            "scopes": token.scopes,
            "expires_at": token.expires_at,
        }

    def store() -> NotesStore:
        if notes is None:
            raise ToolError("the notes store is not configured (no Redis)")
        return notes

    @server.tool(description="List the team's notes (needs notes:read).")
    async def list_notes() -> list[dict[str, Any]]:
        _require(READ, scope_implies)
        return await store().list()

    @server.tool(description="Read one note by id (needs notes:read).")
    async def read_note(note_id: str) -> dict[str, Any]:
        _require(READ, scope_implies)
        try:
            return await store().get(note_id)
        except NoteError as exc:
            raise ToolError(str(exc)) from None

    @server.tool(description="Create a note (needs notes:write).")
    async def create_note(title: str, body: str = "") -> dict[str, Any]:
        token = _require(WRITE, scope_implies)
        try:
            return await store().create(title, body, author=_author(token))
        except NoteError as exc:
            raise ToolError(str(exc)) from None

    @server.tool(description="Delete a note by id (needs notes:write).")
    async def delete_note(note_id: str) -> dict[str, Any]:
        _require(WRITE, scope_implies)
        return {"deleted": await store().delete(note_id)}

    if downstream is None:  # delegated access not configured (no downstreams): no such tool
        return

    @server.tool(
        description="Call a downstream API as you (delegated access through the broker): Microsoft Graph /me "
        "for Entra users, the identity provider's userinfo for OIDC users, the internal demo API for LDAP "
        "users (needs notes:read)."
    )
    async def call_downstream(ctx: Context) -> dict[str, Any] | InputRequiredResult:
        _require(READ, scope_implies)
        return await downstream.call(ctx)
