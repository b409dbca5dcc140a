"""Enterprise-managed authorization (MCP ext-auth, SEP-990) end to end, with the MCP Python SDK's
own client extension, `IdentityAssertionOAuthProvider`, and nothing mocked.

Two brokers on loopback share one Redis (each with its own key prefix) and one slapd:

* broker A is the enterprise IdP. The user signs in there once, through the LDAP login form,
  with the authorization code flow and the `openid` scope; the client exchanges the ID token at
  A's `/token` (RFC 8693) for an ID-JAG naming broker B and the MCP server. A's policy decides
  which scopes the ID-JAG carries (`external_authorization_servers`, mappings on its resources).
* broker B (two replicas on one Redis) is `mcp_app`'s authorization server and trusts A as an
  ID-JAG issuer (`identity_assertion.trusted_issuers`, users looked up by email in the
  directory). The SDK client connects to `mcp_app`, gets 401, fetches B's metadata from B's
  issuer, redeems the ID-JAG with the RFC 7523 jwt-bearer grant and calls tools.

No browser ever reaches B: every request B and its replica serve is counted on the server side.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import httpx2
import pytest
from mcp.client.auth.extensions.identity_assertion import IdentityAssertionOAuthProvider
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from mcp.shared.exceptions import MCPError

from broker.app import create_app as create_broker
from broker.config import parse_config
from broker.devstack import RedisServer, Slapd, free_port
from mcp_app.app import create_app as create_mcp_app
from mcp_app.settings import McpAppSettings
from tests.broker.flows import Broker, broker_yaml, exchange, login
from tests.broker.oauth.test_refresh_paths import directory_user, leave_group
from tests.http import running

TEST_TIMEOUT = 30.0
AGENT = "agent"  # the MCP client's id at broker A (the IdP), a confidential static client
AGENT_SECRET = "agent-secret-" + "a" * 24
AGENT_AT_B = "agent-at-b"  # the same client's id at broker B (the MCP server's authorization server)
AGENT_AT_B_SECRET = "agent-at-b-secret-" + "b" * 24
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
ID_JAG_TYPE = "urn:ietf:params:oauth:token-type:id-jag"
BROWSER_PATHS = ("/authorize", "/consent", "/login", "/callback")


def static_client(client_id: str, secret: str) -> str:
    """A confidential client, as a list item of ``registration.static_clients``."""
    return (
        f"    - client_id: {client_id}\n"
        f"      client_name: Enterprise agent\n"
        f'      client_secret: "{secret}"\n'
        f'      redirect_uris: ["http://127.0.0.1:33418/callback"]\n'
    )


def with_static_client(text: str, client_id: str, secret: str) -> str:
    assert text.count("\n  static_clients:\n") == 1
    return text.replace("\n  static_clients:\n", "\n  static_clients:\n" + static_client(client_id, secret))


def idp_yaml(port: int, redis_url: str, slapd: Slapd, *, b_issuer: str, mcp_url: str) -> str:
    """Broker A: the users' IdP. It issues ID-JAGs for B's MCP server to the agent, with the scopes
    its own rules give: readers get notes:read, writers notes:write."""
    text = broker_yaml(
        port,
        redis_url,
        slapd,
        prefix=f"jaga{secrets.token_hex(6)}",
        mappings="""  - id: partner-readers
    resource: partner-notes
    provider: demo-ldap
    groups: [mcp-readers]
    scopes: [notes:read]
  - id: partner-writers
    resource: partner-notes
    provider: demo-ldap
    groups: [mcp-writers]
    scopes: [notes:write]
""",
        extra=f"""external_authorization_servers:
  - issuer: {b_issuer}
    clients:
      {AGENT}: {AGENT_AT_B}
    resources:
      - id: partner-notes
        uri: {mcp_url}
        name: Team notes at the partner
        scopes:
          - name: notes:read
            description: Read notes
          - name: notes:write
            description: Write notes
            implies: [notes:read]
""",
    )
    return with_static_client(text, AGENT, AGENT_SECRET)


def as_yaml(port: int, redis_url: str, slapd: Slapd, *, prefix: str, a_issuer: str, mcp_url: str) -> str:
    """Broker B: mcp_app's authorization server. It redeems A's ID-JAGs for the notes server,
    finding the user in its directory by the assertion's email; its own rules decide the scopes."""
    text = broker_yaml(
        port,
        redis_url,
        slapd,
        prefix=prefix,
        resource=mcp_url,
        providers=f"""  - id: partner-ldap
    type: ldap
    display_name: Directory, by email
    urls: ["{slapd.url}"]
    bind_dn: "{slapd.service_dn}"
    bind_password: "{slapd.service_password}"
    user_base_dn: ou=people,dc=demo,dc=local
    group_base_dn: ou=groups,dc=demo,dc=local
    user_filter: "(&(objectClass=inetOrgPerson)(mail={{username}}))"
""",
        mappings="""  - id: jag-readers
    resource: notes
    provider: partner-ldap
    groups: [mcp-readers]
    scopes: [notes:read]
  - id: jag-writers
    resource: notes
    provider: partner-ldap
    groups: [mcp-writers]
    scopes: [notes:write]
""",
        extra=f"""identity_assertion:
  trusted_issuers:
    - issuer: {a_issuer}
      provider: partner-ldap
      subject_claim: email
      resources: [notes]
""",
    )
    return with_static_client(text, AGENT_AT_B, AGENT_AT_B_SECRET)


class Counted:
    """An ASGI app that records the path of every HTTP request it serves, then serves it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.paths: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await self.app(scope, receive, send)

    def browser_hits(self) -> list[str]:
        return [p for p in self.paths if p.startswith(BROWSER_PATHS)]


@dataclass(frozen=True)
class Federation:
    idp: Broker  # broker A
    auth: Broker  # broker B, the first replica: the one its issuer names
    replica: str  # base URL of B's second replica (same configuration, same Redis)
    mcp_url: str
    idp_served: Counted
    auth_served: Counted
    replica_served: Counted


@pytest.fixture(scope="module")
def federation(redis_server: RedisServer, slapd: Slapd) -> Iterator[Federation]:
    a_port, b_port, b2_port, mcp_port = free_port(), free_port(), free_port(), free_port()
    mcp_url = f"http://127.0.0.1:{mcp_port}/mcp"
    a_issuer, b_issuer = f"http://127.0.0.1:{a_port}", f"http://127.0.0.1:{b_port}"
    a_config = parse_config(idp_yaml(a_port, redis_server.url, slapd, b_issuer=b_issuer, mcp_url=mcp_url))
    b_prefix = f"jagb{secrets.token_hex(6)}"
    b_config = parse_config(
        as_yaml(b_port, redis_server.url, slapd, prefix=b_prefix, a_issuer=a_issuer, mcp_url=mcp_url)
    )
    assert (a_config.issuer, b_config.issuer) == (a_issuer, b_issuer)
    mcp_settings = McpAppSettings(
        resource_url=mcp_url, issuer=b_issuer, redis_url=redis_server.url, redis_key_prefix=b_prefix
    )
    idp, auth, replica = (
        Counted(create_broker(a_config)),
        Counted(create_broker(b_config)),
        Counted(create_broker(b_config)),
    )
    with (
        running(idp, a_port),
        running(auth, b_port),
        running(replica, b2_port) as replica_base,
        running(create_mcp_app(mcp_settings), mcp_port),
    ):
        yield Federation(
            idp=Broker(a_issuer, a_config),
            auth=Broker(b_issuer, b_config),
            replica=replica_base,
            mcp_url=mcp_url,
            idp_served=idp,
            auth_served=auth,
            replica_served=replica,
        )


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a compact JWS, unverified (the brokers verify; the test reads)."""
    header, payload, _ = token.split(".")
    return _segment(header), _segment(payload)


def _segment(part: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return value


def sign_in(federation: Federation, username: str) -> dict[str, Any]:
    """The one browser sign-in: the agent's authorization code flow at A with `openid`, through the
    LDAP login form; the code exchange's answer (with the ID token)."""
    nonce = secrets.token_urlsafe(12)
    auth = login(federation.idp, AGENT, username, scope="openid", nonce=nonce)
    answer = exchange(federation.idp, AGENT, auth, client_secret=AGENT_SECRET)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    header, claims = jwt_parts(body["id_token"])
    assert header["typ"] == "JWT"
    assert (claims["iss"], claims["aud"], claims["nonce"]) == (federation.idp.base, AGENT, nonce)
    return body


def token_exchange(federation: Federation, id_token: str, **over: str) -> httpx.Response:
    """RFC 8693 at A: the agent's ID token for an ID-JAG naming B and the MCP server."""
    form = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": id_token,
        "subject_token_type": ID_TOKEN_TYPE,
        "requested_token_type": ID_JAG_TYPE,
        "audience": federation.auth.base,
        "resource": federation.mcp_url,
        **over,
    }
    return httpx.post(f"{federation.idp.base}/token", data=form, auth=(AGENT, AGENT_SECRET), timeout=10)


class MemoryTokenStorage:
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return None

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        pass


@dataclass
class Agent:
    """The MCP client: holds the ID token from the one sign-in, and asks A for an ID-JAG whenever
    the SDK needs one (the SDK's ``assertion_provider``)."""

    federation: Federation
    id_token: str
    asked: list[tuple[str, str]] = field(default_factory=list)  # (audience, resource) the SDK asked for
    issued: list[dict[str, Any]] = field(default_factory=list)  # A's token exchange answers
    sent: list[tuple[str, str, int | None]] = field(default_factory=list)  # the SDK's requests: method, url, status
    storage: MemoryTokenStorage = field(default_factory=MemoryTokenStorage)  # the tokens B issued

    async def id_jag(self, audience: str, resource: str) -> str:
        self.asked.append((audience, resource))
        answer = await asyncio.to_thread(token_exchange, self.federation, self.id_token)
        assert answer.status_code == 200, answer.text
        self.issued.append(answer.json())
        return str(answer.json()["access_token"])

    async def on_request(self, request: httpx2.Request) -> None:
        self.sent.append((request.method, str(request.url), None))

    async def on_response(self, response: httpx2.Response) -> None:
        for i in range(len(self.sent) - 1, -1, -1):
            method, url, status = self.sent[i]
            if status is None and url == str(response.request.url):
                self.sent[i] = (method, url, response.status_code)
                break

    def provider(self) -> IdentityAssertionOAuthProvider:
        return IdentityAssertionOAuthProvider(
            server_url=self.federation.mcp_url,
            storage=self.storage,
            client_id=AGENT_AT_B,
            client_secret=AGENT_AT_B_SECRET,
            issuer=self.federation.auth.base,
            assertion_provider=self.id_jag,
            token_endpoint_auth_method="client_secret_basic",
        )

    def http(self, provider: IdentityAssertionOAuthProvider) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(
            auth=provider,
            timeout=httpx2.Timeout(15.0),
            event_hooks={"request": [self.on_request], "response": [self.on_response]},
        )


def redeem(base: str, assertion: str) -> httpx.Response:
    """The jwt-bearer grant at one of B's replicas, as the agent."""
    return httpx.post(
        f"{base}/token",
        data={"grant_type": JWT_BEARER, "assertion": assertion},
        auth=(AGENT_AT_B, AGENT_AT_B_SECRET),
        timeout=10,
    )


async def test_sdk_client_reaches_the_mcp_server_with_an_id_jag_and_no_browser_at_b(federation: Federation) -> None:
    a, b, mcp = federation.idp.base, federation.auth.base, federation.mcp_url
    idp_before, auth_before = len(federation.idp_served.paths), len(federation.auth_served.paths)
    signed_in = await asyncio.to_thread(sign_in, federation, "alice")
    agent = Agent(federation, signed_in["id_token"])

    # mcp_app names B as its authorization server (what the SDK's own issuer setting must match).
    prm_url = f"{mcp.removesuffix('/mcp')}/.well-known/oauth-protected-resource/mcp"
    prm = await asyncio.to_thread(httpx.get, prm_url, timeout=10)
    assert prm.json()["authorization_servers"] == [b]

    provider = agent.provider()
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        agent.http(provider) as http,
        Client(streamable_http_client(mcp, http_client=http)) as client,
    ):
        tools = await client.list_tools()
        assert {"whoami", "create_note", "list_notes"} <= {tool.name for tool in tools.tools}
        who = await client.call_tool("whoami", {})
        assert not who.is_error, who
        created = await client.call_tool("create_note", {"title": "via ID-JAG", "body": "no browser"})
        assert not created.is_error, created  # notes:write, from A's policy and B's
        listed = await client.call_tool("list_notes", {})
        assert not listed.is_error, listed

    # The SDK: 401 from mcp_app, B's metadata from B's issuer, one jwt-bearer grant at B, then MCP.
    assert agent.sent[0] == ("POST", mcp, 401)
    assert (f"{b}/.well-known/oauth-authorization-server", 200) in [(u, s) for _, u, s in agent.sent]
    token_calls = [(m, u, s) for m, u, s in agent.sent if u == f"{b}/token"]
    assert token_calls == [("POST", f"{b}/token", 200)]
    assert all(urlsplit(u).netloc in {urlsplit(b).netloc, urlsplit(mcp).netloc} for _, u, _ in agent.sent)

    # The one ID-JAG: asked for B and the MCP server, issued by A with A's policy's scopes for alice.
    assert agent.asked == [(b, mcp)]
    [issued] = agent.issued
    assert (issued["issued_token_type"], issued["token_type"]) == (ID_JAG_TYPE, "N_A")
    assert 0 < issued["expires_in"] <= 300
    assert issued["scope"] == "notes:read notes:write"
    header, jag = jwt_parts(issued["access_token"])
    assert header["typ"] == "oauth-id-jag+jwt"
    _, id_claims = jwt_parts(signed_in["id_token"])
    assert (jag["iss"], jag["aud"], jag["resource"], jag["client_id"]) == (a, b, mcp, AGENT_AT_B)
    assert jag["sub"] == id_claims["sub"]
    assert jag["email"] == "alice@demo.local"
    assert set(jag["scope"].split()) == {"notes:read", "notes:write"}
    assert 0 < jag["exp"] - jag["iat"] <= 300

    # The access token B issued: for the MCP server, alice as B's directory knows her (found by
    # email: the same entry, so the same local subject as at A), the agent's client id at B, no
    # refresh token (the client asks A for another ID-JAG instead).
    tokens = agent.storage.tokens
    assert tokens is not None
    assert tokens.refresh_token is None
    assert set((tokens.scope or "").split()) == {"notes:read", "notes:write"}
    _, access = jwt_parts(tokens.access_token)
    assert (access["iss"], access["aud"], access["client_id"]) == (b, mcp, AGENT_AT_B)
    me = who.structured_content
    assert me is not None, who
    assert me["client_id"] == AGENT_AT_B
    assert sorted(me["scopes"]) == ["notes:read", "notes:write"]
    assert me["subject"] == "partner-ldap:" + id_claims["sub"].split(":", 1)[1]

    # No browser at B, ever: B and its replica served no authorization, consent, login or callback
    # request; A served exactly one authorization request (the sign-in) and two token requests.
    assert federation.auth_served.browser_hits() == []
    assert federation.replica_served.browser_hits() == []
    assert federation.auth_served.paths[auth_before:].count("/token") == 1
    idp_paths = federation.idp_served.paths[idp_before:]
    assert idp_paths.count("/authorize") == 1
    assert idp_paths.count("/token") == 2  # the code exchange, the token exchange

    # Replay: the ID-JAG the SDK redeemed is refused at either replica of B (its jti is spent in
    # the Redis both share); a fresh ID-JAG from the same sign-in is redeemed once, at the replica,
    # and then refused at the first.
    for base in (b, federation.replica):
        replayed = await asyncio.to_thread(redeem, base, issued["access_token"])
        assert replayed.status_code == 400, replayed.text
        assert replayed.json()["error"] == "invalid_grant", replayed.text
        assert "already used" in replayed.json()["error_description"], replayed.text
    fresh = await asyncio.to_thread(token_exchange, federation, signed_in["id_token"])
    assert fresh.status_code == 200, fresh.text
    first = await asyncio.to_thread(redeem, federation.replica, fresh.json()["access_token"])
    assert first.status_code == 200, first.text
    assert first.json()["scope"] == "notes:read notes:write"
    again = await asyncio.to_thread(redeem, b, fresh.json()["access_token"])
    assert (again.status_code, again.json()["error"]) == (400, "invalid_grant"), again.text
    assert "already used" in again.json()["error_description"], again.text
    assert federation.replica_served.browser_hits() == []
    assert federation.auth_served.browser_hits() == []


async def test_the_scopes_are_what_the_policy_allows_a_reader(federation: Federation) -> None:
    """bob is a reader: A's ID-JAG carries notes:read alone even when the client asks for more, so
    B's token has notes:read and the write tool refuses him."""
    signed_in = await asyncio.to_thread(sign_in, federation, "bob")
    agent = Agent(federation, signed_in["id_token"])
    provider = agent.provider()
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        agent.http(provider) as http,
        Client(streamable_http_client(federation.mcp_url, http_client=http)) as client,
    ):
        who = await client.call_tool("whoami", {})
        assert not who.is_error, who
        listed = await client.call_tool("list_notes", {})
        assert not listed.is_error, listed
        with pytest.raises(MCPError):
            await client.call_tool("create_note", {"title": "not bob's"})
    assert who.structured_content is not None
    assert who.structured_content["scopes"] == ["notes:read"]
    # The write call: 403 insufficient_scope from mcp_app; the SDK stepped up (a new ID-JAG, B's
    # token endpoint asked for notes:write too), A's policy still gave notes:read alone, so B's
    # new token had notes:read alone and mcp_app refused again.
    assert [issued["scope"] for issued in agent.issued] == ["notes:read", "notes:read"]
    assert [s for _, u, s in agent.sent if u == federation.mcp_url][-2:] == [403, 403]
    assert [(u, s) for _, u, s in agent.sent if u.endswith("/token")] == [(f"{federation.auth.base}/token", 200)] * 2
    asked_more = await asyncio.to_thread(
        token_exchange, federation, signed_in["id_token"], scope="notes:read notes:write"
    )
    assert asked_more.status_code == 200, asked_more.text
    assert asked_more.json()["scope"] == "notes:read"
    assert federation.auth_served.browser_hits() == []


def test_a_user_removed_from_the_granting_group_gets_no_id_jag(federation: Federation, slapd: Slapd) -> None:
    """Signed in at A as a reader, then removed from mcp-readers in the directory: A re-checks the
    user before issuing an ID-JAG, and issues none (invalid_scope); the user deleted from the
    directory: invalid_grant. Nothing reaches B."""
    with directory_user(slapd, ("mcp-readers",)) as (uid, dn):
        signed_in = sign_in(federation, uid)
        before = token_exchange(federation, signed_in["id_token"])
        assert before.status_code == 200, before.text
        assert before.json()["scope"] == "notes:read"

        leave_group(slapd, dn, "mcp-readers")
        removed = token_exchange(federation, signed_in["id_token"])
        assert removed.status_code == 400, removed.text
        assert removed.json()["error"] == "invalid_scope", removed.text
        assert "access_token" not in removed.json()

        admin = slapd.admin_connection()
        try:
            assert admin.delete(dn), admin.result
        finally:
            admin.unbind()
        deleted = token_exchange(federation, signed_in["id_token"])
        assert deleted.status_code == 400, deleted.text
        assert deleted.json()["error"] == "invalid_grant", deleted.text
    assert federation.auth_served.browser_hits() == []
