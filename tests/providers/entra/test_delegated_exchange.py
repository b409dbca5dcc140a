"""Delegated access for Entra users through the real broker (issue 14): the user signs in with the
Entra emulator (``delegated_access``), the MCP server exchanges the access token it received for a
Microsoft Graph token (RFC 8693 at ``/token``), and the Graph emulator's ``/me`` answers as that
user; on-behalf-of too; Entra wanting the user back is ``interaction_required`` with the broker's
URL; the vault is sealed at rest and gone with the grant."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import redis

from broker.app import create_app
from broker.config import parse_config
from broker.devstack import RedisServer, Slapd
from broker.store.keys import Keys
from tests.broker.flows import INTROSPECTOR_SECRET, Broker, fresh_broker_yaml, notes_server_delegates
from tests.emulators.entra import CLIENT_ID, READERS, EntraEmulator
from tests.http import running
from tests.providers.entra.test_broker_flows import MAPPINGS, provider_yaml, tokens

pytestmark = pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended:UserWarning")

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
GRAPH = "https://graph.microsoft.com"
GRAPH_OBO = "https://graph-obo.example.com"


def delegation(entra: EntraEmulator) -> str:
    return f"""
delegation:
  targets:
    - id: graph
      kind: entra
      provider: entra
      audience: {GRAPH}
      scopes: ["{entra.base}/User.Read", "{entra.base}/Mail.Read"]
    - id: graph-obo
      kind: entra
      provider: entra
      on_behalf_of: true
      audience: {GRAPH_OBO}
      scopes: ["{entra.base}/User.Read"]
  rules:
    - id: notes-graph
      mcp_server: notes
      target: graph
      provider: entra
      groups: ["{READERS}"]
      scopes: ["{entra.base}/User.Read", "{entra.base}/Mail.Read"]
    - id: notes-graph-obo
      mcp_server: notes
      target: graph-obo
      provider: entra
      groups: ["{READERS}"]
      scopes: ["{entra.base}/User.Read"]
"""


@contextmanager
def delegating_entra_broker(redis_server: RedisServer, slapd: Slapd, entra: EntraEmulator) -> Iterator[Broker]:
    port, text = fresh_broker_yaml(
        redis_server.url,
        slapd,
        providers=provider_yaml(entra, "    delegated_access: true\n"),
        mappings=MAPPINGS,
        extra=delegation(entra),
    )
    text = notes_server_delegates(text)
    config = parse_config(text)
    with running(create_app(config), port):
        entra.allow_redirect(f"{config.issuer}/callback/entra")
        yield Broker(config.issuer, config)


@pytest.fixture
def broker(redis_server: RedisServer, slapd: Slapd, entra: EntraEmulator) -> Iterator[Broker]:
    with delegating_entra_broker(redis_server, slapd, entra) as running_broker:
        yield running_broker


def exchange(broker: Broker, subject_token: str, audience: str, **over: str) -> httpx.Response:
    data = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject_token,
        "subject_token_type": ACCESS_TOKEN,
        "audience": audience,
        **over,
    }
    return httpx.post(f"{broker.base}/token", data=data, auth=("notes-server", INTROSPECTOR_SECRET), timeout=20)


def graph_me(entra: EntraEmulator, token: str) -> httpx.Response:
    with httpx.Client(verify=ssl.create_default_context(cafile=entra.ca_file), timeout=10) as http:
        return http.get(f"{entra.base}/v1.0/me", headers={"Authorization": f"Bearer {token}"})


def test_graph_me_answers_as_the_signed_in_user(broker: Broker, entra: EntraEmulator) -> None:
    _, alice = tokens(broker, entra, "alice")
    answer = exchange(broker, alice["access_token"], GRAPH, scope=f"{entra.base}/User.Read")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["issued_token_type"] == ACCESS_TOKEN
    assert "refresh_token" not in body
    me = graph_me(entra, body["access_token"])
    assert me.status_code == 200, me.text
    assert me.json()["userPrincipalName"] == entra.user("alice").upn
    _, bob = tokens(broker, entra, "bob")  # and bob's token is bob's
    bobs = exchange(broker, bob["access_token"], GRAPH, scope=f"{entra.base}/User.Read")
    assert graph_me(entra, bobs.json()["access_token"]).json()["userPrincipalName"] == entra.user("bob").upn


def test_on_behalf_of_the_user(broker: Broker, entra: EntraEmulator) -> None:
    entra.app.admin_consent[f"api://{CLIENT_ID}"] = {"access_as_user"}
    _, alice = tokens(broker, entra, "alice")
    answer = exchange(broker, alice["access_token"], GRAPH_OBO)
    assert answer.status_code == 200, answer.text
    assert entra.issued[-1] == ("on_behalf_of", "alice", f"{entra.base}/User.Read")
    assert graph_me(entra, answer.json()["access_token"]).json()["userPrincipalName"] == entra.user("alice").upn


def test_a_permission_without_consent_sends_the_user_to_the_broker(broker: Broker, entra: EntraEmulator) -> None:
    _, alice = tokens(broker, entra, "alice")
    answer = exchange(broker, alice["access_token"], GRAPH, scope=f"{entra.base}/Mail.Read")
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "interaction_required"
    assert answer.json()["interaction_uri"] == f"{broker.base}/account/delegation/graph"
    entra.require_interaction.add("alice")  # conditional access: the same answer
    again = exchange(broker, alice["access_token"], GRAPH_OBO)
    assert again.json()["error"] == "interaction_required"


def test_the_session_is_sealed_at_rest_and_gone_with_the_grant(
    broker: Broker, entra: EntraEmulator, redis_server: RedisServer
) -> None:
    client_id, alice = tokens(broker, entra, "alice")
    entra.app.admin_consent[f"api://{CLIENT_ID}"] = {"access_as_user"}
    assert exchange(broker, alice["access_token"], GRAPH_OBO).status_code == 200  # the cache grows: vault
    grant_id = alice["refresh_token"].split(".")[1]
    keys = Keys(broker.config.redis.key_prefix)
    direct = redis.Redis.from_url(redis_server.url)
    try:
        assert direct.exists(keys.upstream_tokens(grant_id))
        secrets_upstream = [*entra._refresh_tokens, *entra._tokens]  # every token Entra issued
        for key in direct.scan_iter(f"{broker.config.redis.key_prefix}:*"):
            kind = direct.type(key)
            values = [direct.get(key) or b""] if kind == b"string" else []
            values += list(direct.hgetall(key).values()) if kind == b"hash" else []
            for raw in values:
                assert not any(t.encode() in raw for t in secrets_upstream), key
        revoked = httpx.post(
            f"{broker.base}/revoke",
            data={"token": alice["refresh_token"], "client_id": client_id},
            timeout=10,
        )
        assert revoked.status_code == 200
        assert not direct.exists(keys.upstream_tokens(grant_id))
        refused = exchange(broker, alice["access_token"], GRAPH, scope=f"{entra.base}/User.Read")
        assert refused.status_code == 400, refused.text
    finally:
        direct.close()


def test_after_signing_in_again_at_the_interaction_uri_the_exchange_works(broker: Broker, entra: EntraEmulator) -> None:
    entra.app.admin_consent[f"api://{CLIENT_ID}"] = {"access_as_user"}
    _, alice = tokens(broker, entra, "alice")
    _, alice_again = tokens(broker, entra, "alice")  # a second MCP client of hers
    entra.revoke_sessions("alice")  # an admin revoked her Entra sessions
    refused = exchange(broker, alice["access_token"], GRAPH_OBO)
    assert refused.json()["error"] == "interaction_required", refused.text
    uri = refused.json()["interaction_uri"]

    assert entra.ca_file is not None
    with httpx.Client(verify=ssl.create_default_context(cafile=entra.ca_file), timeout=10) as http:
        started = http.get(uri)
        assert started.status_code == 303, started.text
        assert started.headers["location"].startswith(f"{entra.base}/")
        entra.next_user = "alice"
        back = http.get(started.headers["location"])
        assert back.status_code == 302, back.text
        assert back.headers["location"].startswith(f"{broker.base}/callback/entra?")
        done = http.get(back.headers["location"])
    assert done.status_code == 200, done.text
    assert "Signed in again" in done.text

    for body in (alice, alice_again):  # both of her grants have the new session
        answer = exchange(broker, body["access_token"], GRAPH_OBO)
        assert answer.status_code == 200, answer.text
        assert graph_me(entra, answer.json()["access_token"]).json()["userPrincipalName"] == entra.user("alice").upn


def test_the_interaction_uri_of_an_unknown_target_is_not_found(broker: Broker) -> None:
    assert httpx.get(f"{broker.base}/account/delegation/nothing", timeout=10).status_code == 404
