"""The demo tools over real streamable HTTP with broker-issued tokens: scopes, step-up, revocation."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from jose import jwt
from mcp.types import CallToolResult

from tests.broker.flows import refresh, tokens_for
from tests.mcp_app.conftest import ADMIN_TOKEN, Stack, session


def payload(result: CallToolResult) -> object:
    assert not result.is_error, result
    if result.structured_content is not None:
        content = result.structured_content
        return content.get("result", content) if isinstance(content, dict) else content
    return json.loads(result.content[0].text)  # type: ignore[union-attr]


def call(url: str, token: str, name: str, arguments: dict[str, object] | None = None) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments or {}}}
    return httpx.post(
        url, json=body, headers={"authorization": f"Bearer {token}", "accept": "application/json, text/event-stream"}
    )


def post_raw(url: str, token: str, content: bytes) -> httpx.Response:
    headers = {
        "authorization": f"Bearer {token}",
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
    }
    return httpx.post(url, content=content, headers=headers)


async def test_bob_reads_but_cannot_write(stack: Stack) -> None:
    _, tokens = tokens_for(stack.broker, "bob", resource=stack.resource)
    async with session(stack.mcp_urls[0], tokens["access_token"]) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert names == {"whoami", "list_notes", "read_note", "create_note", "delete_note"}
        assert isinstance(payload(await client.call_tool("list_notes", {})), list)
        me = payload(await client.call_tool("whoami", {}))
        assert isinstance(me, dict)
        assert me["scopes"] == ["notes:read"]
        assert tokens["access_token"] not in json.dumps(me)
    denied = call(stack.mcp_urls[0], tokens["access_token"], "create_note", {"title": "x"})
    assert denied.status_code == 403
    challenge = denied.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="notes:read notes:write"' in challenge  # the union to ask for when stepping up
    assert "resource_metadata=" in challenge
    assert tokens["access_token"] not in denied.text
    # JSON may escape the method name; the step-up challenge must not depend on its spelling.
    escaped = (
        b'{"jsonrpc":"2.0","id":2,"method":"tools\\/call","params":{"name":"create_note","arguments":{"title":"x"}}}'
    )
    assert json.loads(escaped)["method"] == "tools/call"
    sneaky = post_raw(stack.mcp_urls[0], tokens["access_token"], escaped)
    assert sneaky.status_code == 403
    assert 'error="insufficient_scope"' in sneaky.headers["www-authenticate"]


async def test_alice_writes_with_attribution_and_validation(stack: Stack) -> None:
    _, tokens = tokens_for(stack.broker, "alice", resource=stack.resource)
    subject = jwt.get_unverified_claims(tokens["access_token"])["sub"]
    async with session(stack.mcp_urls[0], tokens["access_token"]) as client:
        note = payload(await client.call_tool("create_note", {"title": "Standup", "body": "at 10"}))
        assert isinstance(note, dict)
        assert note["author"] == subject
        listed = payload(await client.call_tool("list_notes", {}))
        assert isinstance(listed, list)
        assert "Standup" in [n["title"] for n in listed]
        read = payload(await client.call_tool("read_note", {"note_id": note["id"]}))
        assert isinstance(read, dict)
        assert read["body"] == "at 10"
        bad = await client.call_tool("create_note", {"title": "   "})
        assert bad.is_error
        assert "title must be 1 to 200 characters" in bad.content[0].text  # type: ignore[union-attr]
        missing = await client.call_tool("read_note", {"note_id": "nope"})
        assert missing.is_error
        assert payload(await client.call_tool("delete_note", {"note_id": note["id"]})) == {"deleted": True}


async def test_token_for_another_resource_is_refused(stack: Stack) -> None:
    _, tokens = tokens_for(stack.broker, "bob", resource="http://127.0.0.1:8002/mcp", scope="other:use")
    response = call(stack.mcp_urls[0], tokens["access_token"], "whoami")
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


@pytest.mark.parametrize("via", ["admin", "client"])
async def test_revocation_reaches_both_servers_within_a_second(stack: Stack, via: str) -> None:
    client, tokens = tokens_for(stack.broker, "alice", resource=stack.resource)
    token = tokens["access_token"]
    for url in stack.mcp_urls:
        assert call(url, token, "whoami").status_code == 200  # warm: cached as valid on both
    revoked_at = time.monotonic()
    async with httpx.AsyncClient(base_url=stack.broker.base) as http:
        if via == "admin":
            subject = jwt.get_unverified_claims(token)["sub"]
            await http.post(f"/admin/users/{subject}/revoke", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
        else:
            await http.post("/revoke", data={"token": token, "client_id": client["client_id"]})
    pending = set(stack.mcp_urls)
    while pending and time.monotonic() - revoked_at < 1.0:
        pending = {url for url in pending if call(url, token, "whoami").status_code != 401}
        await asyncio.sleep(0.02)
    assert pending == set(), "a server still honoured the revoked token after 1 s"
    assert refresh(stack.broker, client["client_id"], tokens["refresh_token"]).json()["error"] == "invalid_grant"


def test_verification_cache_metrics(stack: Stack) -> None:
    _, tokens = tokens_for(stack.broker, "bob", resource=stack.resource)
    before = httpx.get(stack.metrics_urls[1]).text
    for _ in range(5):
        assert call(stack.mcp_urls[1], tokens["access_token"], "whoami").status_code == 200
    after = httpx.get(stack.metrics_urls[1]).text

    def value(text: str, result: str) -> float:
        line = next(
            (x for x in text.splitlines() if x.startswith(f'mcpb_verification_cache_total{{result="{result}"}}')), None
        )
        return float(line.rsplit(" ", 1)[1]) if line else 0.0

    assert value(after, "miss") - value(before, "miss") == 1
    assert value(after, "hit") - value(before, "hit") == 4
    assert 'mcpb_http_requests_total{app="mcp_app"' in after
