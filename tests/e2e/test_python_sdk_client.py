"""The MCP Python SDK's own OAuth client against the real stack, from the bare MCP server URL.

`mcp.client.auth.OAuthClientProvider` gets a 401 from `mcp_app`, discovers the protected resource
metadata and then the broker's metadata, registers (RFC 7591 or a client ID metadata document),
sends the user through consent and the LDAP login (driven here with plain httpx, as a browser
would), exchanges the code, calls tools over streamable HTTP, and refreshes the access token once
it has expired. Nothing is mocked: broker, MCP server, Redis and slapd are the real things.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import httpx2
import pytest
from mcp.client.auth import OAuthClientProvider
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from pydantic import AnyUrl

from tests.broker.flows import hidden_inputs
from tests.e2e.conftest import Stack

REDIRECT_URI = "http://127.0.0.1:33418/callback"  # never listened on: the browser below stops at the redirect
TEST_TIMEOUT = 60.0


class MemoryTokenStorage:
    """The SDK's `TokenStorage` protocol, in memory, keeping every token set it was given."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None
        self.history: list[OAuthToken] = []
        self.expires_at: float | None = None  # never earlier than the SDK's own idea of the expiry

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens
        self.history.append(tokens)
        self.expires_at = time.time() + tokens.expires_in if tokens.expires_in is not None else None

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


@dataclass
class Exchange:
    method: str
    url: str
    body: bytes
    status: int | None = None

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode()).items()}


@dataclass
class Wire:
    """Every request the SDK's HTTP client sends (auth-flow requests included), with its status."""

    exchanges: list[Exchange] = field(default_factory=list)

    async def on_request(self, request: httpx2.Request) -> None:
        self.exchanges.append(Exchange(request.method, str(request.url), request.content))

    async def on_response(self, response: httpx2.Response) -> None:
        for exchange in reversed(self.exchanges):
            if exchange.status is None and exchange.url == str(response.request.url):
                exchange.status = response.status_code
                break

    def to(self, url: str) -> list[Exchange]:
        return [e for e in self.exchanges if e.url.split("?")[0] == url]


@dataclass
class Browser:
    """The user agent: the SDK hands it the authorization URL; it approves consent, logs in as
    alice through the LDAP provider and catches the redirect back to the client."""

    broker_base: str
    authorization_urls: list[str] = field(default_factory=list)
    result: AuthorizationCodeResult | None = None

    async def open(self, authorization_url: str) -> None:
        self.authorization_urls.append(authorization_url)
        async with httpx.AsyncClient(follow_redirects=False, timeout=10) as http:
            consent = await http.get(authorization_url)
            # A redirect here is the broker refusing the request (error=... back to the client).
            assert consent.status_code == 200, (consent.status_code, consent.headers.get("location"), consent.text)
            approved = await http.post(
                f"{self.broker_base}/consent", data={**hidden_inputs(consent.text), "decision": "approve"}
            )
            assert approved.status_code == 303, approved.text
            login_page = await http.get(urljoin(self.broker_base + "/", approved.headers["location"]))
            assert login_page.status_code == 200, login_page.text
            done = await http.post(
                f"{self.broker_base}/login",
                data={**hidden_inputs(login_page.text), "username": "alice", "password": "demo-alice"},
            )
            assert done.status_code == 303, done.text
        location = done.headers["location"]
        assert location.startswith(REDIRECT_URI + "?"), location
        query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        assert "code" in query, location
        self.result = AuthorizationCodeResult(code=query["code"], state=query.get("state"), iss=query.get("iss"))

    async def callback(self) -> AuthorizationCodeResult:
        assert self.result is not None, "the redirect handler did not complete"
        result, self.result = self.result, None
        return result


def client_metadata() -> OAuthClientMetadata:
    return OAuthClientMetadata(
        client_name="SDK end-to-end client",
        redirect_uris=[AnyUrl(REDIRECT_URI)],
        token_endpoint_auth_method="none",
    )


def publish_metadata_document(stack: Stack, metadata: OAuthClientMetadata) -> str:
    """The client's metadata document, as the client would host it; its URL is the client_id."""
    url = stack.docs.url("/sdk-client/metadata.json")
    stack.docs.publish(
        "/sdk-client/metadata.json", {"client_id": url, **metadata.model_dump(mode="json", exclude_none=True)}
    )
    return url


async def run_flow(stack: Stack, client_metadata_url: str | None) -> tuple[MemoryTokenStorage, Wire, Browser]:
    storage, wire, browser = MemoryTokenStorage(), Wire(), Browser(stack.broker.base)
    metadata = client_metadata()
    provider = OAuthClientProvider(
        server_url=stack.mcp_url,
        client_metadata=metadata,
        storage=storage,
        redirect_handler=browser.open,
        callback_handler=browser.callback,
        client_metadata_url=client_metadata_url,
    )
    http = httpx2.AsyncClient(
        auth=provider,
        timeout=httpx2.Timeout(15.0),
        event_hooks={"request": [wire.on_request], "response": [wire.on_response]},
    )
    async with http, Client(streamable_http_client(stack.mcp_url, http_client=http)) as client:
        tools = await client.list_tools()
        assert "whoami" in [tool.name for tool in tools.tools]
        first_whoami = await client.call_tool("whoami", {})
        assert not first_whoami.is_error, first_whoami
        first = storage.tokens
        assert first is not None
        assert first.refresh_token
        assert len(browser.authorization_urls) == 1
        token_sets_before = len(storage.history)

        # Outlive the access token (2 s), then call again: the SDK must refresh before sending.
        assert storage.expires_at is not None
        await asyncio.sleep(max(0.0, storage.expires_at - time.time()) + 0.2)
        second_whoami = await client.call_tool("whoami", {})
        assert not second_whoami.is_error, second_whoami

    second = storage.tokens
    assert second is not None
    assert len(storage.history) == token_sets_before + 1  # exactly one refresh, for the last call
    assert second.access_token != first.access_token
    assert second.refresh_token
    assert second.refresh_token != first.refresh_token  # the broker rotated it
    assert len(browser.authorization_urls) == 1  # refreshed, not sent back through the login

    # The MCP server saw the same user and client through both tokens, the second one newer.
    assert storage.client_info is not None
    first_who, second_who = first_whoami.structured_content, second_whoami.structured_content
    assert first_who is not None, first_whoami
    assert second_who is not None, second_whoami
    for who in (first_who, second_who):
        assert who["client_id"] == storage.client_info.client_id
        assert "notes:read" in who["scopes"]
    assert first_who["subject"]
    assert second_who["subject"] == first_who["subject"]
    assert second_who["expires_at"] > first_who["expires_at"]

    # The broker's token endpoint: one code exchange, then refresh grants (normally one; a slow
    # machine may need another before the first calls), the last one spending the first refresh token.
    token_requests = wire.to(f"{stack.broker.base}/token")
    grants = [(e.form()["grant_type"], e.status) for e in token_requests]
    assert grants[0] == ("authorization_code", 200), grants
    assert len(grants) >= 2, grants
    assert all(grant == ("refresh_token", 200) for grant in grants[1:]), grants
    refresh = token_requests[-1].form()
    assert refresh["refresh_token"] == first.refresh_token
    assert refresh["client_id"] == storage.client_info.client_id
    assert refresh["resource"] == stack.mcp_url
    return storage, wire, browser


def discovery_urls(wire: Wire) -> list[tuple[str, str, int | None]]:
    return [(e.method, e.url, e.status) for e in wire.exchanges if "/.well-known/" in e.url]


@pytest.mark.parametrize("variant", ["dynamic_registration", "metadata_document"])
async def test_sdk_oauth_client_end_to_end(stack: Stack, variant: str) -> None:
    cimd_url = publish_metadata_document(stack, client_metadata()) if variant == "metadata_document" else None
    async with asyncio.timeout(TEST_TIMEOUT):
        storage, wire, browser = await run_flow(stack, cimd_url)

    broker, mcp = stack.broker.base, stack.mcp_url
    mcp_origin = mcp.removesuffix("/mcp")
    # Discovery: the 401's resource_metadata hint first, then the broker's RFC 8414 document.
    assert discovery_urls(wire)[:2] == [
        ("GET", f"{mcp_origin}/.well-known/oauth-protected-resource/mcp", 200),
        ("GET", f"{broker}/.well-known/oauth-authorization-server", 200),
    ]
    assert (wire.exchanges[0].url, wire.exchanges[0].status) == (mcp, 401)

    registrations = wire.to(f"{broker}/register")
    assert storage.client_info is not None
    if variant == "dynamic_registration":
        assert [e.status for e in registrations] == [201]
        sent = json.loads(registrations[0].body)
        assert sent["redirect_uris"] == [REDIRECT_URI]
        assert sent["application_type"] == "native"
        assert sent["token_endpoint_auth_method"] == "none"
        assert storage.client_info.client_id != cimd_url
    else:
        assert registrations == []
        assert storage.client_info.client_id == cimd_url
        assert stack.docs.fetched  # the broker fetched the document over HTTPS

    [authorization_url] = browser.authorization_urls
    params = {k: v[0] for k, v in parse_qs(urlsplit(authorization_url).query).items()}
    assert authorization_url.startswith(f"{broker}/authorize?")
    assert params["client_id"] == storage.client_info.client_id
    assert params["resource"] == mcp
    assert params["code_challenge_method"] == "S256"
    # The SDK asks for the scopes the MCP server advertises (401 challenge / PRM); all must be this resource's.
    [resource] = [r for r in stack.broker.config.resources if r.uri == mcp]
    assert set(params["scope"].split()) <= {scope.name for scope in resource.scopes}, params["scope"]

    code_exchange = wire.to(f"{broker}/token")[0].form()
    assert code_exchange["client_id"] == storage.client_info.client_id
    assert code_exchange["resource"] == mcp
    assert code_exchange["redirect_uri"] == REDIRECT_URI
    assert "code_verifier" in code_exchange
