"""The delegated-access demo (issue 14) through the real MCP SDK client: ``tools/call
call_downstream`` on mcp_app, which exchanges the user's token at the broker (RFC 8693) and calls
the downstream API as the user: Microsoft Graph ``/me`` of the Entra emulator for an Entra user,
the test OpenID provider's userinfo for an OIDC user, mcp_app's internal demo API (a broker-minted
token with ``act``) for an LDAP user. When Entra needs the user again (sessions revoked), the
broker's interaction URL reaches the client as a URL-mode elicitation (or, for a client without
it, in the tool error), and after the sign-in at that URL the call works.

One broker (LDAP, Entra emulator, node-oidc-provider), one mcp_app, real Redis and slapd."""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from jose import jwt
from mcp import Client
from mcp.client.session import ClientRequestContext, ElicitationFnT
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp_types import CallToolResult, ElicitRequestParams, ElicitRequestURLParams, ElicitResult, ErrorData

from broker.app import create_app as create_broker
from broker.config import parse_config
from broker.devstack import RedisServer, Slapd, free_port
from mcp_app.app import create_app as create_mcp_app
from mcp_app.settings import McpAppSettings
from tests.broker.flows import (
    INTROSPECTOR_SECRET,
    RESOURCE,
    Authorization,
    Broker,
    authorize_params,
    broker_yaml,
    exchange,
    hidden_inputs,
    notes_server_delegates,
    pkce_pair,
    register,
)
from tests.emulators.entra import CLIENT_ID, READERS, EntraEmulator
from tests.http import running
from tests.providers.entra.test_broker_flows import MAPPINGS as ENTRA_MAPPINGS
from tests.providers.entra.test_broker_flows import provider_yaml
from tests.providers.entra.test_broker_flows import tokens as entra_tokens
from tests.providers.oidc.conftest import op  # noqa: F401 - the test OP, one per worker
from tests.providers.oidc.op import TestOP
from tests.providers.oidc.test_broker_flows import MAPPINGS as OIDC_MAPPINGS
from tests.providers.oidc.test_broker_flows import PROVIDER as OIDC
from tests.providers.oidc.test_broker_flows import OidcBroker
from tests.providers.oidc.test_broker_flows import tokens_for as oidc_tokens_for

pytestmark = pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended:UserWarning")

DEMO_API = "https://demo-api.example.com"
GRAPH = "https://graph.microsoft.com"


def delegation(entra: EntraEmulator) -> str:
    return f"""
delegation:
  targets:
    - id: graph
      kind: entra
      provider: entra
      on_behalf_of: true
      audience: {GRAPH}
      scopes: ["{entra.base}/User.Read"]
    - id: userinfo
      kind: oidc
      provider: {OIDC}
      audience: oidc-userinfo
      scopes: [openid, profile, email]
    - id: demo-api
      kind: internal
      audience: {DEMO_API}
      scopes: [demo:read]
  rules:
    - id: notes-graph
      mcp_server: notes
      target: graph
      provider: entra
      groups: ["{READERS}"]
      scopes: ["{entra.base}/User.Read"]
    - id: notes-userinfo
      mcp_server: notes
      target: userinfo
      provider: {OIDC}
      groups: [mcp-readers]
      scopes: [openid, profile, email]
    - id: notes-demo-api
      mcp_server: notes
      target: demo-api
      provider: demo-ldap
      groups: [mcp-readers]
      scopes: [demo:read]
"""


@dataclass
class Demo:
    broker: Broker
    entra: EntraEmulator
    oidc: OidcBroker
    mcp_url: str
    api_url: str


@pytest.fixture(scope="module")
def demo(
    redis_server: RedisServer,
    slapd: Slapd,
    op: TestOP,  # noqa: F811 - the fixture imported above
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Demo]:
    entra = EntraEmulator()
    with ExitStack() as stack:
        stack.enter_context(entra.serve(tmp_path_factory.mktemp("demo-entra")))
        entra.app.admin_consent[f"api://{CLIENT_ID}"] = {"access_as_user"}  # on-behalf-of
        entra.add_user("frank", groups={READERS})
        broker_port, mcp_port = free_port(), free_port()
        oidc_client, oidc_secret = f"broker-{secrets.token_hex(4)}", secrets.token_urlsafe(24)
        providers = (
            provider_yaml(entra, "    delegated_access: true\n")
            + f"""
  - id: {OIDC}
    type: oidc
    display_name: Test OP
    issuer: "{op.issuer}"
    client_id: "{oidc_client}"
    client_secret: "{oidc_secret}"
    scopes: [openid, profile, email, groups, offline_access]
    groups_claim: groups
    use_upstream_refresh: true
    authorize_params: {{prompt: consent}}
    http_timeout: 5
"""
        )
        text = broker_yaml(
            broker_port,
            redis_server.url,
            slapd,
            prefix=f"demo{secrets.token_hex(6)}",
            providers=providers,
            mappings=ENTRA_MAPPINGS + OIDC_MAPPINGS,
            extra=delegation(entra),
        )
        text = notes_server_delegates(text)
        config = parse_config(text)
        broker = Broker(config.issuer, config)
        stack.enter_context(running(create_broker(config), broker_port))
        entra.allow_redirect(f"{config.issuer}/callback/entra")
        oidc = OidcBroker(broker, op, op.issuer)
        op.put_client(oidc_client, client_secret=oidc_secret, redirect_uris=[oidc.callback])
        userinfo = httpx.get(f"{op.issuer}/.well-known/openid-configuration", timeout=10).json()["userinfo_endpoint"]
        api_url = f"http://127.0.0.1:{mcp_port}/demo-api/whoami"
        settings = McpAppSettings(
            resource_url=RESOURCE,  # the sign-in helpers ask for it; served on another port
            issuer=config.issuer,
            redis_url=redis_server.url,
            redis_key_prefix=config.redis.key_prefix,
            allowed_hosts=[f"127.0.0.1:{mcp_port}"],
            metrics_port=None,
            delegation_client_id="notes-server",
            delegation_client_secret=INTROSPECTOR_SECRET,
            downstreams={
                "entra": {"target": GRAPH, "url": f"{entra.base}/v1.0/me"},
                OIDC: {"target": "oidc-userinfo", "url": userinfo},
                "demo-ldap": {"target": DEMO_API, "url": api_url},
            },
            downstream_ca_file=str(entra.ca_file),
            demo_api_audience=DEMO_API,
        )
        stack.enter_context(running(create_mcp_app(settings), mcp_port))
        yield Demo(broker, entra, oidc, f"http://127.0.0.1:{mcp_port}/mcp", api_url)


@dataclass
class Elicited:
    """The client's elicitation callback: remembers each URL, optionally does the sign-in there."""

    sign_in: Any = None  # (url) -> None, run before answering accept
    urls: list[str] = field(default_factory=list)

    async def __call__(self, context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult | ErrorData:
        assert isinstance(params, ElicitRequestURLParams), params
        self.urls.append(params.url)
        if self.sign_in is not None:
            await asyncio.to_thread(self.sign_in, params.url)
        return ElicitResult(action="accept")


@asynccontextmanager
async def session(
    url: str, token: str, elicitation: ElicitationFnT | None = None, mode: str = "auto"
) -> AsyncIterator[Client]:
    http = create_mcp_http_client(headers={"authorization": f"Bearer {token}"})
    transport = streamable_http_client(url, http_client=http)
    async with http, Client(transport, elicitation_callback=elicitation, mode=mode) as c:
        yield c


async def call_downstream(
    demo: Demo, token: str, elicitation: ElicitationFnT | None = None, mode: str = "auto"
) -> CallToolResult:
    async with session(demo.mcp_url, token, elicitation, mode) as client:
        return await client.call_tool("call_downstream", {})


def answer(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert result.structured_content is not None
    body = result.structured_content.get("result", result.structured_content)
    assert isinstance(body, dict)
    return body


def text_of(result: CallToolResult) -> str:
    return " ".join(str(getattr(block, "text", "")) for block in result.content)


def ldap_tokens(broker: Broker, username: str) -> dict[str, Any]:
    """An MCP client's sign-in with the directory (chosen on the consent page): its tokens."""
    client_id = register(broker)["client_id"]
    verifier, challenge = pkce_pair()
    params = authorize_params(client_id, challenge)
    with broker.client() as browser:
        consent = browser.get("/authorize", params=params)
        assert consent.status_code == 200, consent.text
        form = {**hidden_inputs(consent.text), "decision": "approve", "provider": "demo-ldap"}
        approved = browser.post("/consent", data=form)
        assert approved.status_code == 303, approved.text
        login_page = browser.get(approved.headers["location"])
        assert login_page.status_code == 200, login_page.text
        fields = {**hidden_inputs(login_page.text), "username": username, "password": f"demo-{username}"}
        done = browser.post("/login", data=fields)
        assert done.status_code == 303, done.text
    location = done.headers["location"]
    query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    response = exchange(broker, client_id, Authorization(query["code"], verifier, params["state"], location, query))
    assert response.status_code == 200, response.text
    tokens: dict[str, Any] = response.json()
    return tokens


def sign_in_at_entra(demo: Demo, user: str, url: str) -> None:
    """What the user's browser does at the broker's interaction URL: Entra signs them in again."""
    assert demo.entra.ca_file is not None
    with httpx.Client(verify=ssl.create_default_context(cafile=demo.entra.ca_file), timeout=10) as http:
        started = http.get(url)
        assert started.status_code == 303, started.text
        demo.entra.next_user = user
        back = http.get(started.headers["location"])
        assert back.status_code == 302, back.text
        done = http.get(back.headers["location"])
    assert done.status_code == 200, done.text


async def test_an_ldap_user_reaches_the_internal_api_with_a_broker_minted_token(demo: Demo) -> None:
    alice = ldap_tokens(demo.broker, "alice")
    body = answer(await call_downstream(demo, alice["access_token"]))
    assert body["provider"] == "demo-ldap"
    assert body["target"] == DEMO_API
    me = body["answer"]
    assert me["sub"] == jwt.get_unverified_claims(alice["access_token"])["sub"]  # alice, as the broker names her
    assert me["aud"] == DEMO_API
    assert me["act"] == {"sub": RESOURCE, "client_id": "notes-server"}  # mcp_app acts for alice
    assert me["scope"] == "demo:read"
    # The demo API takes nothing but the broker's tokens for it: not the MCP server's token.
    async with httpx.AsyncClient(timeout=10) as http:
        refused = await http.get(demo.api_url, headers={"Authorization": f"Bearer {alice['access_token']}"})
    assert refused.status_code == 401


async def test_an_entra_user_reaches_graph_me_as_themselves(demo: Demo) -> None:
    _, alice = entra_tokens(demo.broker, demo.entra, "alice")
    body = answer(await call_downstream(demo, alice["access_token"]))
    assert body["provider"] == "entra"
    assert body["answer"]["userPrincipalName"] == demo.entra.user("alice").upn


async def test_an_oidc_user_reaches_the_userinfo_of_their_provider(demo: Demo) -> None:
    _, bob = oidc_tokens_for(demo.oidc, "bob")
    body = answer(await call_downstream(demo, bob["access_token"]))
    assert body["provider"] == OIDC
    assert body["answer"]["sub"] == "bob"
    assert body["answer"]["email"] == "bob@example.test"


async def test_entra_wanting_the_user_again_is_a_url_elicitation(demo: Demo) -> None:
    # bob: the client declares URL elicitation; the user signs in at the URL it shows, accepts,
    # and the same tools/call (retried by the SDK with the answer) returns Graph's /me.
    _, bob = entra_tokens(demo.broker, demo.entra, "bob")
    demo.entra.revoke_sessions("bob")  # an admin revoked his Entra sessions
    elicited = Elicited(sign_in=lambda url: sign_in_at_entra(demo, "bob", url))
    body = answer(await call_downstream(demo, bob["access_token"], elicited))
    assert elicited.urls == [f"{demo.broker.base}/account/delegation/graph"]
    assert body["answer"]["userPrincipalName"] == demo.entra.user("bob").upn

    # frank: accepted without finishing the sign-in: a tool error naming the URL, no second
    # elicitation; after the sign-in the next call works.
    _, frank = entra_tokens(demo.broker, demo.entra, "frank")
    demo.entra.revoke_sessions("frank")
    idle = Elicited()
    pending = await call_downstream(demo, frank["access_token"], idle)
    assert pending.is_error
    assert idle.urls == [f"{demo.broker.base}/account/delegation/graph"]
    assert idle.urls[0] in text_of(pending)
    await asyncio.to_thread(sign_in_at_entra, demo, "frank", idle.urls[0])
    assert answer(await call_downstream(demo, frank["access_token"], idle))["answer"]["userPrincipalName"] == (
        demo.entra.user("frank").upn
    )
    assert len(idle.urls) == 1


async def test_a_client_without_url_elicitation_gets_the_url_in_the_tool_error(demo: Demo) -> None:
    _, alice = entra_tokens(demo.broker, demo.entra, "alice")
    demo.entra.revoke_sessions("alice")
    refused = await call_downstream(demo, alice["access_token"])  # no elicitation callback
    assert refused.is_error
    url = f"{demo.broker.base}/account/delegation/graph"
    assert url in text_of(refused)
    # A client of the handshake-era protocol: mcp_app is stateless, it cannot ask mid-call.
    legacy = Elicited()
    refused = await call_downstream(demo, alice["access_token"], legacy, mode="legacy")
    assert refused.is_error
    assert url in text_of(refused)
    assert legacy.urls == []
    await asyncio.to_thread(sign_in_at_entra, demo, "alice", url)
    body = answer(await call_downstream(demo, alice["access_token"]))
    assert body["answer"]["userPrincipalName"] == demo.entra.user("alice").upn


def test_the_settings_take_downstreams_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_APP_DELEGATION_CLIENT_ID", "notes-server")
    monkeypatch.setenv("MCP_APP_DELEGATION_CLIENT_SECRET", "s" * 40)
    monkeypatch.setenv("MCP_APP_DOWNSTREAMS", json.dumps({"entra": {"target": GRAPH, "url": f"{GRAPH}/v1.0/me"}}))
    settings = McpAppSettings()
    assert settings.downstreams["entra"].url == f"{GRAPH}/v1.0/me"
    monkeypatch.delenv("MCP_APP_DELEGATION_CLIENT_SECRET")
    with pytest.raises(ValueError, match="delegation_client_id and delegation_client_secret"):
        McpAppSettings()
