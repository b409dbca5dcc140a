"""The MCP TypeScript SDK's own OAuth client (``@modelcontextprotocol/sdk`` 1.x, from npm) against
the real stack, from the bare MCP server URL.

``ts-client/client.mjs`` gives the SDK's ``StreamableHTTPClientTransport`` an in-memory
``OAuthClientProvider`` and nothing else: on the 401 the SDK discovers the protected resource
metadata and then the broker's metadata, registers (RFC 7591), sends the user to the broker with
PKCE; the provider's ``redirectToAuthorization`` plays the browser (consent with the CSRF cookie,
LDAP login form, the 303 back with the code); ``finishAuth`` exchanges the code. Then tools are
listed and called, the SDK refreshes, a token is revoked, and bob (notes:read only) meets a 403
``insufficient_scope``. The script prints one JSON line per HTTP exchange and per step; the
assertions below are on those lines. Broker, mcp_app (a separate process), Redis and slapd are
the real things.

The SDK refreshes only when a request is refused (it never reads ``expires_in``), and mcp_app
accepts a token up to 10 s past its expiry, so the refresh is forced by running the SDK's own
``auth()`` orchestrator with tokens in store and no code, which is what the transport does on a 401.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from broker.devstack import RedisServer, Slapd
from broker.oauth.pkce import s256
from tests.e2e.ts_stack import (
    CLIENT_DIR,
    REDIRECT_URI,
    SDK_PACKAGE,
    ClientRun,
    Http,
    TsStack,
    ensure_packages,
    run_client,
    sdk_version,
    start_stack,
)

ALL_SCOPES = "notes:read notes:write"
TOOLS = ["create_note", "delete_note", "list_notes", "read_note", "whoami"]
UPSCOPING_REFUSAL = "Server returned 403 after trying upscoping"  # StreamableHTTPError's message in SDK 1.x


@pytest.fixture(scope="session")
def ts_sdk() -> str:
    """Install the pinned SDK (``npm ci``, once per checkout) and return its version."""
    ensure_packages()
    return sdk_version()


@pytest.fixture(scope="module")
def ts_stack(
    ts_sdk: str, redis_server: RedisServer, slapd: Slapd, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TsStack]:
    with start_stack(redis_server, slapd, tmp_path_factory.mktemp("ts-stack")) as stack:
        yield stack


def challenge(header: str | None) -> dict[str, str]:
    """The parameters of a ``WWW-Authenticate: Bearer k="v", ...`` challenge."""
    assert header is not None
    assert header.startswith("Bearer "), header
    return dict(re.findall(r'(\w+)="([^"]*)"', header))


def notes_of(step: dict[str, Any]) -> list[dict[str, Any]]:
    return list((step["structured"] or {}).get("result", []))


def calls(http: list[Http]) -> list[tuple[str, str, int | None]]:
    return [(h.method, h.path, h.status) for h in http]


def sign_in_checks(run: ClientRun, stack: TsStack, grant_types: list[str]) -> dict[str, Any]:
    """Discovery from a bare 401, registration, the redirect with PKCE, the code exchange and
    reconnecting: what every scenario starts with. Returns the token response."""
    issuer, prm_url = stack.issuer, stack.resource_metadata_url
    connect = run.step("connect_unauthenticated")
    assert connect["refused_with"]["type"] == "UnauthorizedError"  # connect() ends, the user is sent to sign in
    assert connect["redirects"] == 1
    assert connect["code_received"]

    wire = run.sdk("connect_unauthenticated")
    first = wire[0]
    assert (first.method, first.url, first.status, first.bearer) == ("POST", stack.mcp_url, 401, None)
    assert first.request["method"] == "initialize"
    bare = challenge(first.www_authenticate)
    assert bare == {"resource_metadata": prm_url, "scope": ALL_SCOPES}  # no error: there was no token
    # The SDK follows resource_metadata, then the broker's RFC 8414 document (the first URL it tries).
    assert [(h.method, h.url, h.status) for h in wire[1:3]] == [
        ("GET", prm_url, 200),
        ("GET", f"{issuer}/.well-known/oauth-authorization-server", 200),
    ]
    assert wire[1].response["resource"] == stack.mcp_url
    assert wire[1].response["authorization_servers"] == [issuer]
    assert wire[2].response["issuer"] == issuer

    # RFC 7591: the SDK posts the provider's clientMetadata plus the challenged scope. SDK 1.x has no
    # application_type in its client metadata; the broker infers "native" from the loopback redirect.
    registration = wire[3]
    assert (registration.method, registration.url, registration.status) == ("POST", f"{issuer}/register", 201)
    assert registration.request == {
        "client_name": registration.request["client_name"],
        "redirect_uris": [REDIRECT_URI],
        "grant_types": grant_types,
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
        "scope": ALL_SCOPES,
    }
    client = registration.response
    assert client["application_type"] == "native"
    assert client["token_endpoint_auth_method"] == "none"
    assert "client_secret" not in client
    assert client["grant_types"] == grant_types
    assert len(wire) == 4  # nothing else: the rest of the sign-in happens in the browser

    # The authorization request the SDK built, and the browser part the provider played.
    redirect = run.redirects[0]
    assert redirect["phase"] == "connect_unauthenticated"
    assert redirect["followed"]
    assert redirect["url"] == f"{issuer}/authorize"
    params = redirect["params"]
    assert params["response_type"] == "code"
    assert params["client_id"] == client["client_id"]
    assert params["code_challenge_method"] == "S256"
    assert redirect["verifier_matches_challenge"]
    assert params["redirect_uri"] == REDIRECT_URI
    assert params["scope"] == ALL_SCOPES  # from the 401's scope parameter
    assert params["resource"] == stack.mcp_url  # RFC 8707, the protected resource metadata's resource
    assert params["state"]
    assert redirect["state_matches"]
    assert redirect["returned_to"] == REDIRECT_URI
    assert redirect["returned"]["iss"] == issuer
    assert redirect["consent_fields"] == ["csrf", "flow", "provider"]
    browser = [h for h in run.http if h.actor == "browser" and h.phase == "connect_unauthenticated"]
    assert calls(browser) == [
        ("GET", "/authorize", 200),
        ("POST", "/consent", 303),
        ("GET", "/login", 200),
        ("POST", "/login", 303),
    ]
    assert browser[0].cookies == []
    assert "mcpb_csrf" in browser[1].cookies  # the double-submit CSRF cookie from the consent page
    assert {"mcpb_csrf", "mcpb_flow"} <= set(browser[3].cookies)  # and the flow cookie set on approval

    # finishAuth: the SDK rediscovers, then exchanges the code with its PKCE verifier.
    finish = run.step("finish_auth")
    token = [h for h in run.sdk("finish_auth") if h.path == "/token"]
    assert len(token) == 1
    assert token[0].status == 200
    form = token[0].request
    assert form == {
        "grant_type": "authorization_code",
        "code": redirect["returned"]["code"],
        "code_verifier": form["code_verifier"],
        "redirect_uri": REDIRECT_URI,
        "resource": stack.mcp_url,
        "client_id": client["client_id"],
    }
    assert s256(form["code_verifier"]) == params["code_challenge"]
    issued: dict[str, Any] = token[0].response
    assert issued["token_type"] == "Bearer"
    assert issued["expires_in"] > 0
    assert finish["tokens"]["access_token"] == issued["access_token"]
    assert finish["tokens"]["issuer"] == issuer  # the SDK stamps what it stores with the issuer
    assert finish["client_id"] == client["client_id"]

    # Reconnect on a fresh transport: initialize goes through with the new bearer token.
    run.step("reconnect")
    initialize = run.sdk("reconnect")[0]
    assert (initialize.method, initialize.status, initialize.bearer) == ("POST", 200, issued["access_token"])
    return issued


def test_the_sdk_is_the_pinned_1x_release(ts_sdk: str) -> None:
    pinned = json.loads((CLIENT_DIR / "package.json").read_text())["dependencies"][SDK_PACKAGE]
    locked = json.loads((CLIENT_DIR / "package-lock.json").read_text())["packages"][f"node_modules/{SDK_PACKAGE}"]
    assert ts_sdk == pinned == locked["version"]
    assert ts_sdk.split(".")[0] == "1"


def test_sign_in_tools_refresh_and_revocation(ts_stack: TsStack) -> None:
    run = run_client(ts_stack, "alice", "alice")
    issued = sign_in_checks(run, ts_stack, ["authorization_code", "refresh_token"])
    assert issued["scope"] == ALL_SCOPES
    assert issued["refresh_token"]

    assert run.step("tools_list")["tools"] == TOOLS
    who = run.step("whoami")
    assert not who["is_error"]
    assert who["structured"]["scopes"] == ["notes:read", "notes:write"]
    assert who["structured"]["client_id"] == run.redirects[0]["params"]["client_id"]
    created = run.step("create_note")
    assert not created["is_error"]
    assert created["structured"]["author"] == who["structured"]["subject"]
    listed = run.step("list_notes")  # the notes:read tool
    assert not listed["is_error"]
    assert listed["title"] in [n["title"] for n in notes_of(listed)]

    # Refresh, by the SDK's auth() with the tokens in store: one refresh_token grant, rotated tokens.
    refresh = run.step("refresh")
    assert refresh["result"] == "AUTHORIZED"
    assert not refresh["redirected"]
    before, after = refresh["before"], refresh["after"]
    assert before["access_token"] == issued["access_token"]
    assert after["access_token"] != before["access_token"]
    assert after["refresh_token"] != before["refresh_token"]  # the broker rotates refresh tokens
    assert after["scope"] == ALL_SCOPES
    grants = [h for h in run.sdk("refresh") if h.path == "/token"]
    assert len(grants) == 1
    assert grants[0].status == 200
    assert grants[0].request == {
        "grant_type": "refresh_token",
        "refresh_token": before["refresh_token"],
        "resource": ts_stack.mcp_url,
        "client_id": who["structured"]["client_id"],
    }
    assert grants[0].response["access_token"] == after["access_token"]
    again = run.step("whoami_after_refresh")
    assert not again["is_error"]
    assert again["bearer"] == after["access_token"]
    assert [h.bearer for h in run.sdk("whoami_after_refresh")] == [after["access_token"]]
    assert again["structured"]["expires_at"] >= who["structured"]["expires_at"]

    # Revocation (RFC 7009) of the new access token: the next tools/call is refused within a second.
    revoke = run.step("revoke")
    assert revoke["endpoint"] == f"{ts_stack.issuer}/revoke"
    assert revoke["status"] == 200
    assert revoke["revoked"] == after["access_token"]
    refused = run.step("call_after_revocation")
    assert refused["ms_after_revocation"] < 1000
    assert refused["refused_with"]["type"] == "UnauthorizedError"
    last = f"call_after_revocation#{refused['attempts']}"
    wire = run.sdk(last)
    call = wire[0]
    assert (call.method, call.url, call.status, call.bearer) == ("POST", ts_stack.mcp_url, 401, after["access_token"])
    assert call.request["method"] == "tools/call"
    assert challenge(call.www_authenticate)["error"] == "invalid_token"
    # The SDK tries its refresh token, which died with the grant, drops its tokens and asks for a
    # new sign-in (not followed: the user is away); no call went through.
    token = [h for h in wire if h.path == "/token"]
    assert len(token) == 1
    assert token[0].status == 400
    assert token[0].response["error"] == "invalid_grant"
    assert token[0].request["refresh_token"] == after["refresh_token"]
    assert refused["invalidated"] == ["tokens"]
    assert refused["tokens_left"] is None
    assert [r["followed"] for r in run.redirects if r["phase"] == last] == [False]
    assert not [h for h in wire if h.path == "/mcp" and h.status == 200]


def test_step_up_with_a_refresh_token_refreshes_and_ends_refused(ts_stack: TsStack) -> None:
    """Bob holds notes:read; create_note needs notes:write. SDK 1.x answers the 403
    insufficient_scope with auth(scope=union), which, holding a refresh token, refreshes (a refresh
    cannot widen the scope, and the SDK sends none) and retries; the same 403 ends it without the
    user ever being asked (modelcontextprotocol/typescript-sdk#2255)."""
    run = run_client(ts_stack, "step-up-refresh-token", "bob")
    issued = sign_in_checks(run, ts_stack, ["authorization_code", "refresh_token"])
    assert issued["scope"] == "notes:read"
    assert issued["refresh_token"]
    assert not run.step("list_notes")["is_error"]

    step_up = run.step("create_note")
    assert step_up["refused_with"]["type"] == "StreamableHTTPError"
    assert step_up["http_status"] == 403
    assert UPSCOPING_REFUSAL in step_up["refused_with"]["message"]
    assert step_up["redirects_requested"] == 0  # no re-authorization: refreshed instead
    wire = run.sdk("create_note")
    mcp = [h for h in wire if h.path == "/mcp"]
    assert [h.status for h in mcp] == [403, 403]
    for response in mcp:
        assert challenge(response.www_authenticate) == {
            "error": "insufficient_scope",
            "scope": ALL_SCOPES,  # what bob holds plus what create_note needs
            "resource_metadata": ts_stack.resource_metadata_url,
            "error_description": "This tool requires the notes:write scope",
        }
    token = [h for h in wire if h.path == "/token"]
    assert len(token) == 1
    assert token[0].status == 200
    assert token[0].request["grant_type"] == "refresh_token"
    assert "scope" not in token[0].request
    assert token[0].response["scope"] == "notes:read"
    assert mcp[1].bearer == token[0].response["access_token"] != mcp[0].bearer
    assert not [h for h in run.http if h.path == "/authorize" and h.phase == "create_note"]

    # The refusal is clean: the session still works and no note was written.
    after = run.step("list_notes_after_refusal")
    assert not after["is_error"]
    assert after["title"] not in [n["title"] for n in notes_of(after)]


def test_step_up_without_a_refresh_token_reauthorizes_with_the_union_scope(ts_stack: TsStack) -> None:
    """A client registered without the refresh_token grant: on the 403 the SDK sends the user back
    to the broker asking for the challenged union scope; bob signs in, the broker still grants
    notes:read only, and the retried call ends refused."""
    run = run_client(ts_stack, "step-up-no-refresh-token", "bob")
    issued = sign_in_checks(run, ts_stack, ["authorization_code"])
    assert issued["scope"] == "notes:read"
    assert "refresh_token" not in issued
    assert not run.step("list_notes")["is_error"]

    step_up = run.step("create_note")
    assert step_up["refused_with"]["type"] == "UnauthorizedError"  # the SDK redirected the user
    assert step_up["redirects_requested"] == 1
    assert step_up["code_received"]
    wire = run.sdk("create_note")
    assert wire[0].status == 403
    assert challenge(wire[0].www_authenticate)["scope"] == ALL_SCOPES
    assert not [h for h in wire if h.path in ("/register", "/token")]  # same client, nothing to refresh
    redirect = next(r for r in run.redirects if r["phase"] == "create_note")
    assert redirect["followed"]
    assert redirect["verifier_matches_challenge"]
    assert redirect["state_matches"]
    assert redirect["params"]["scope"] == ALL_SCOPES  # the union, as challenged
    assert redirect["params"]["client_id"] == run.redirects[0]["params"]["client_id"]
    assert redirect["params"]["resource"] == ts_stack.mcp_url

    reissued = run.step("step_up_finish_auth")["tokens"]
    assert reissued["scope"] == "notes:read"
    assert reissued["access_token"] != issued["access_token"]
    token = [h for h in run.sdk("step_up_finish_auth") if h.path == "/token"]
    assert len(token) == 1
    assert token[0].request["grant_type"] == "authorization_code"
    assert token[0].request["code"] == redirect["returned"]["code"]

    retry = run.step("create_note_retry")
    assert retry["refused_with"]["type"] == "StreamableHTTPError"
    assert retry["http_status"] == 403
    assert UPSCOPING_REFUSAL in retry["refused_with"]["message"]
    assert retry["redirects_requested"] == 1  # no second trip to the broker
    assert calls(run.sdk("create_note_retry")) == [("POST", "/mcp", 403)]
    assert run.sdk("create_note_retry")[0].bearer == reissued["access_token"]

    after = run.step("list_notes_after_refusal")
    assert not after["is_error"]
    assert after["title"] not in [n["title"] for n in notes_of(after)]
