"""Delegated access (issue 14): an MCP server exchanges the user's access token it received for a
token of a downstream target (RFC 8693), here the ``internal`` kind: a broker-minted token with an
``act`` claim. Against the real broker, directory (slapd) and Redis, with tokens from real
sign-ins; every refusal the issue names has its test."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import redis
from jose import jwt
from structlog.testing import capture_logs

from broker.app import create_app
from broker.config import parse_config
from broker.devstack import RedisServer, Slapd, free_port
from tests.broker.flows import INTROSPECTOR_SECRET, RESOURCE, Broker, broker_yaml, refresh, tokens_for
from tests.http import running

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
OTHER = "http://127.0.0.1:8002/mcp"
TICKETS = "https://tickets.example.com"
PAYROLL = "https://payroll.example.com"
OTHER_SECRET = "other-server-secret-" + "y" * 24

DELEGATION = f"""
delegation:
  targets:
    - id: tickets
      kind: internal
      audience: {TICKETS}
      scopes: [tickets:read, tickets:write]
      ttl: 120
    - id: payroll
      kind: internal
      audience: {PAYROLL}
      scopes: [payroll:read]
  rules:
    - id: notes-tickets-readers
      mcp_server: notes
      target: tickets
      provider: demo-ldap
      groups: [mcp-readers]
      scopes: [tickets:read]
    - id: notes-tickets-writers
      mcp_server: notes
      target: tickets
      provider: demo-ldap
      groups: [mcp-writers]
      scopes: [tickets:write]
    - id: other-payroll
      mcp_server: other
      target: payroll
      provider: demo-ldap
      groups: [mcp-readers]
      scopes: [payroll:read]
"""
OTHER_CLIENT = f"""      introspection_resources: [notes]
      mcp_server: notes
    - client_id: other-server
      client_name: Other MCP server
      client_secret: "{OTHER_SECRET}"
      redirect_uris: ["https://other.example.com/unused"]
      application_type: web
      mcp_server: other
    - client_id: plain-confidential
      client_name: Not an MCP server
      client_secret: "{OTHER_SECRET}"
      redirect_uris: ["https://plain.example.com/unused"]
      application_type: web
"""
NOTES = ("notes-server", INTROSPECTOR_SECRET)


@contextmanager
def delegating_broker(redis_server: RedisServer, slapd: Slapd, tokens: str = "") -> Iterator[Broker]:
    port = free_port()
    text = broker_yaml(
        port, redis_server.url, slapd, prefix=f"t{secrets.token_hex(6)}", extra=DELEGATION, tokens=tokens
    )
    text = text.replace("      introspection_resources: [notes]\n", OTHER_CLIENT, 1)
    config = parse_config(text)
    with running(create_app(config), port):
        yield Broker(config.issuer, config)


@pytest.fixture
def broker(redis_server: RedisServer, slapd: Slapd) -> Iterator[Broker]:
    with delegating_broker(redis_server, slapd) as running_broker:
        yield running_broker


def exchange(
    broker: Broker, subject_token: str, auth: tuple[str, str] | None = NOTES, **over: str | None
) -> httpx.Response:
    data: dict[str, str | None] = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject_token,
        "subject_token_type": ACCESS_TOKEN,
        "audience": TICKETS,
    }
    data.update(over)
    return httpx.post(
        f"{broker.base}/token",
        data={k: v for k, v in data.items() if v is not None},
        auth=auth,
    )


def verified(broker: Broker, token: str, audience: str) -> dict[str, Any]:
    jwks = httpx.get(f"{broker.base}/jwks.json").json()
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    claims: dict[str, Any] = jwt.decode(token, key, algorithms=[header["alg"]], audience=audience, issuer=broker.base)
    return claims


def refused(response: httpx.Response, error: str) -> None:
    assert response.status_code == (401 if error == "invalid_client" else 400), response.text
    assert response.json()["error"] == error, response.text
    assert response.headers["cache-control"] == "no-store"


def grant_keys(broker: Broker, redis_server: RedisServer, grant_id: str) -> dict[str, bytes | None]:
    """Every key of the grant's slot in Redis, with its value (strings) or None (other types)."""
    client = redis.Redis.from_url(redis_server.url)
    prefix = broker.config.redis.key_prefix
    found: dict[str, bytes | None] = {}
    for key in client.scan_iter(match=f"{prefix}:{{g:{grant_id}}}:*"):
        name = key.decode()
        value = client.get(key) if client.type(key) == b"string" else None
        found[name] = value if isinstance(value, bytes) else None
    client.close()
    return found


def test_an_mcp_server_gets_a_token_for_the_internal_target_as_the_user(broker: Broker) -> None:
    _, tokens = tokens_for(broker, "alice")
    subject = verified(broker, tokens["access_token"], RESOURCE)
    with capture_logs() as logs:
        response = exchange(broker, tokens["access_token"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["issued_token_type"] == ACCESS_TOKEN
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "tickets:read tickets:write"
    assert response.headers["cache-control"] == "no-store"
    claims = verified(broker, body["access_token"], TICKETS)
    assert claims["sub"] == subject["sub"]
    assert claims["aud"] == TICKETS
    assert claims["act"] == {"sub": RESOURCE, "client_id": "notes-server"}  # RFC 8693 §4.1
    assert claims["client_id"] == "notes-server"
    assert claims["scope"] == "tickets:read tickets:write"
    assert claims["sid"] == subject["sid"]  # revoking the grant reaches it too
    # No longer than the subject token's remaining life, the target's ttl, the access-token TTL.
    assert claims["exp"] <= subject["exp"]
    assert claims["exp"] - claims["iat"] <= 120
    assert 0 < body["expires_in"] <= 120
    event = next(e for e in logs if e["event"] == "token_exchanged")
    assert event["mcp_server"] == "notes"
    assert event["target"] == "tickets"
    assert event["sub"] == subject["sub"]
    assert event["scopes"] == ["tickets:read", "tickets:write"]
    assert "access_token" not in event

    # Cached per grant, target and scopes until shortly before it expires; the target named by
    # `resource` (or its id) is the same target.
    again = exchange(broker, tokens["access_token"], audience=None, resource=TICKETS)
    assert again.status_code == 200, again.text
    assert again.json()["access_token"] == body["access_token"]
    narrower = exchange(broker, tokens["access_token"], audience="tickets", scope="tickets:read")
    assert narrower.status_code == 200, narrower.text
    assert narrower.json()["scope"] == "tickets:read"
    assert verified(broker, narrower.json()["access_token"], TICKETS)["scope"] == "tickets:read"


def test_scopes_are_what_the_delegation_rules_give_the_user(broker: Broker) -> None:
    _, bob = tokens_for(broker, "bob")  # mcp-readers only
    response = exchange(broker, bob["access_token"])
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "tickets:read"
    refused(exchange(broker, bob["access_token"], scope="tickets:write"), "invalid_scope")
    refused(exchange(broker, bob["access_token"], scope="payroll:read"), "invalid_scope")


def test_a_token_minted_for_another_mcp_server_is_refused(broker: Broker) -> None:
    _, other = tokens_for(broker, "alice", resource=OTHER)
    with capture_logs() as logs:
        refused(exchange(broker, other["access_token"]), "invalid_grant")  # notes-server, token of `other`
    event = next(e for e in logs if e["event"] == "token_exchange_refused")
    assert event["reason"] == "invalid_grant"
    assert event["mcp_server"] == "notes"
    _, notes = tokens_for(broker, "alice")
    refused(
        exchange(broker, notes["access_token"], auth=("other-server", OTHER_SECRET), audience=PAYROLL), "invalid_grant"
    )
    # Its own token, the other server gets what its rules give it.
    allowed = exchange(broker, other["access_token"], auth=("other-server", OTHER_SECRET), audience=PAYROLL)
    assert allowed.status_code == 200, allowed.text
    assert verified(broker, allowed.json()["access_token"], PAYROLL)["act"]["sub"] == OTHER


def test_a_public_client_or_one_that_is_no_mcp_server_cannot_exchange(broker: Broker) -> None:
    client, tokens = tokens_for(broker, "alice")
    refused(exchange(broker, tokens["access_token"], auth=None, client_id=client["client_id"]), "invalid_client")
    refused(exchange(broker, tokens["access_token"], auth=("plain-confidential", OTHER_SECRET)), "unauthorized_client")
    refused(exchange(broker, tokens["access_token"], auth=("notes-server", "wrong-" + "z" * 40)), "invalid_client")


def test_a_target_the_policy_does_not_allow_is_refused(broker: Broker) -> None:
    _, tokens = tokens_for(broker, "alice")
    refused(exchange(broker, tokens["access_token"], audience=PAYROLL), "invalid_target")  # a rule for `other` only
    refused(exchange(broker, tokens["access_token"], audience="https://unknown.example.com"), "invalid_target")
    refused(exchange(broker, tokens["access_token"], audience=TICKETS, resource=PAYROLL), "invalid_target")
    refused(exchange(broker, tokens["access_token"], audience=None), "invalid_request")
    refused(exchange(broker, tokens["access_token"], audience=RESOURCE), "invalid_target")  # an MCP server


def test_a_subject_token_not_ours_or_delegated_is_refused(broker: Broker) -> None:
    _, tokens = tokens_for(broker, "alice")
    refused(exchange(broker, tokens["access_token"][:-4] + "AAAA"), "invalid_grant")
    delegated = exchange(broker, tokens["access_token"]).json()["access_token"]
    refused(exchange(broker, delegated), "invalid_grant")  # for the tickets API, not for notes
    refused(exchange(broker, tokens["refresh_token"]), "invalid_grant")


def test_a_revoked_grant_is_refused_and_leaves_nothing_of_its_delegation_in_redis(
    broker: Broker, redis_server: RedisServer
) -> None:
    client, tokens = tokens_for(broker, "alice")
    grant_id = verified(broker, tokens["access_token"], RESOURCE)["sid"]
    assert exchange(broker, tokens["access_token"]).status_code == 200
    downstream = f"{broker.config.redis.key_prefix}:{{g:{grant_id}}}:downstream"
    before = grant_keys(broker, redis_server, grant_id)
    assert downstream in before  # the cache is the grant's, sealed
    issued = exchange(broker, tokens["access_token"]).json()["access_token"]
    client_redis = redis.Redis.from_url(redis_server.url)
    cached = client_redis.hgetall(downstream)
    client_redis.close()
    assert cached
    assert all(issued.encode() not in v for v in cached.values())

    revoked = httpx.post(
        f"{broker.base}/revoke", data={"token": tokens["refresh_token"], "client_id": client["client_id"]}
    )
    assert revoked.status_code == 200
    refused(exchange(broker, tokens["access_token"]), "invalid_grant")
    after = grant_keys(broker, redis_server, grant_id)
    assert not [k for k in after if k.endswith((":downstream", ":upstream"))]
    assert all(issued.encode() not in (v or b"") for v in after.values())


def test_an_expired_subject_token_is_refused(redis_server: RedisServer, slapd: Slapd) -> None:
    with delegating_broker(redis_server, slapd, tokens="  access_token_ttl: 2") as broker:
        _, tokens = tokens_for(broker, "alice")
        fresh = exchange(broker, tokens["access_token"])
        assert fresh.status_code == 200, fresh.text
        assert fresh.json()["expires_in"] <= 2  # never beyond the subject token's life
        time.sleep(2.5)
        refused(exchange(broker, tokens["access_token"]), "invalid_grant")


def test_refresh_token_reuse_ends_the_grant_and_its_delegation(broker: Broker, redis_server: RedisServer) -> None:
    client, tokens = tokens_for(broker, "alice")
    grant_id = verified(broker, tokens["access_token"], RESOURCE)["sid"]
    assert exchange(broker, tokens["access_token"]).status_code == 200
    assert any(k.endswith(":downstream") for k in grant_keys(broker, redis_server, grant_id))
    rotated = refresh(broker, client["client_id"], tokens["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    time.sleep(2.5)  # past refresh_reuse_grace: the old token again is theft
    refused(refresh(broker, client["client_id"], tokens["refresh_token"]), "invalid_grant")
    refused(exchange(broker, rotated.json()["access_token"]), "invalid_grant")
    assert not [k for k in grant_keys(broker, redis_server, grant_id) if k.endswith((":downstream", ":upstream"))]
