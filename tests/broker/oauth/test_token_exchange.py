"""RFC 8693 token exchange: an ID token the broker issued, for an ID-JAG naming an MCP server of an
external authorization server (draft-ietf-oauth-identity-assertion-authz-grant §4.3, MCP ext-auth
§4.2). Against the real broker, directory (slapd) and Redis."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jose import jwt
from structlog.testing import capture_logs

from broker.app import create_app
from broker.config import parse_config
from broker.devstack import RedisServer, Slapd
from tests.broker.flows import Broker, exchange, fresh_broker_yaml, login, register
from tests.broker.oauth.test_refresh_paths import as_admin, directory_user, leave_group
from tests.http import running

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
ID_JAG = "urn:ietf:params:oauth:token-type:id-jag"
AS = "https://as.example.com"
CRM = "https://crm.example.com/mcp"
AGENT = "agent-client"  # ours; its id at the external server is THEIRS
THEIRS = "0oa-agent-at-crm"

EXTERNAL = f"""
external_authorization_servers:
  - issuer: {AS}
    clients:
      {AGENT}: {THEIRS}
    resources:
      - id: crm
        uri: {CRM}
        name: CRM
        scopes:
          - name: crm:read
            description: Read customers
          - name: crm:write
            description: Change customers
            implies: [crm:read]
      - id: wiki
        uri: https://wiki.example.com/mcp
        name: Wiki
        scopes:
          - name: wiki:read
            description: Read pages
"""
MAPPINGS = """  - id: readers-crm
    resource: crm
    provider: demo-ldap
    groups: [mcp-readers]
    scopes: [crm:read]
  - id: writers-crm
    resource: crm
    provider: demo-ldap
    groups: [mcp-writers]
    scopes: [crm:write]
"""
STATIC_AGENT = f"""  static_clients:
    - client_id: {AGENT}
      client_name: Agent
      redirect_uris: ["http://127.0.0.1:33418/callback"]
"""


@contextmanager
def idp_broker(redis_server: RedisServer, slapd: Slapd, tokens: str = "") -> Iterator[Broker]:
    """A broker that issues ID-JAGs for the external server ``AS``; ``AGENT`` is a public client."""
    port, text = fresh_broker_yaml(
        redis_server.url,
        slapd,
        mappings=MAPPINGS,
        extra=EXTERNAL,
        tokens=tokens,
    )
    text = text.replace("  static_clients:\n", STATIC_AGENT, 1)
    config = parse_config(text)
    with running(create_app(config), port):
        yield Broker(config.issuer, config)


@pytest.fixture
def broker(redis_server: RedisServer, slapd: Slapd) -> Iterator[Broker]:
    with idp_broker(redis_server, slapd) as running_broker:
        yield running_broker


def id_token_for(broker: Broker, username: str = "alice", client_id: str = AGENT) -> dict[str, Any]:
    """Sign ``username`` in to ``client_id`` with the openid scope: the token response."""
    auth = login(broker, client_id, username, scope="openid", nonce="n-1")
    response = exchange(broker, client_id, auth)
    assert response.status_code == 200, response.text
    tokens: dict[str, Any] = response.json()
    assert "id_token" in tokens
    return tokens


def token_exchange(broker: Broker, id_token: str, client_id: str | None = AGENT, **over: str | None) -> httpx.Response:
    data: dict[str, str | None] = {
        "grant_type": TOKEN_EXCHANGE,
        "client_id": client_id,
        "subject_token": id_token,
        "subject_token_type": ID_TOKEN,
        "requested_token_type": ID_JAG,
        "audience": AS,
        "resource": CRM,
    }
    data.update(over)
    return httpx.post(f"{broker.base}/token", data={k: v for k, v in data.items() if v is not None})


def refused(answer: httpx.Response, error: str) -> str:
    assert answer.status_code == (401 if error == "invalid_client" else 400), answer.text
    body = answer.json()
    assert body["error"] == error, body
    assert answer.headers["cache-control"] == "no-store"
    return str(body["error_description"])


def verified_jag(broker: Broker, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header = jwt.get_unverified_header(token)
    key = next(k for k in httpx.get(f"{broker.base}/jwks.json").json()["keys"] if k["kid"] == header["kid"])
    claims = jwt.decode(token, key, algorithms=["ES256"], audience=AS, issuer=broker.base)
    return header, claims


def test_an_id_token_becomes_an_id_jag(broker: Broker) -> None:
    tokens = id_token_for(broker)
    with capture_logs() as logs:
        answer = token_exchange(broker, tokens["id_token"])
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert set(body) == {"issued_token_type", "access_token", "token_type", "scope", "expires_in"}
    assert body["issued_token_type"] == ID_JAG
    assert body["token_type"] == "N_A"
    assert body["scope"] == "crm:read crm:write"
    assert 0 < body["expires_in"] <= 300
    header, claims = verified_jag(broker, body["access_token"])
    assert header["typ"] == "oauth-id-jag+jwt"
    assert header["alg"] == "ES256"
    id_claims = jwt.get_unverified_claims(tokens["id_token"])
    assert claims["iss"] == broker.base
    assert claims["sub"] == id_claims["sub"]
    assert claims["aud"] == AS
    assert claims["resource"] == CRM
    assert claims["client_id"] == THEIRS  # the client's id at the external server, not ours
    assert claims["scope"] == "crm:read crm:write"
    assert claims["email"] == "alice@demo.local"
    assert claims["exp"] - claims["iat"] == body["expires_in"]
    assert claims["jti"]
    issued = [e for e in logs if e["event"] == "assertion_issued"]
    assert len(issued) == 1
    assert issued[0]["client_id"] == AGENT
    assert issued[0]["audience"] == AS
    assert issued[0]["resource"] == CRM
    assert issued[0]["scopes"] == ["crm:read", "crm:write"]
    assert tokens["id_token"] not in json.dumps(logs, default=str)  # the subject token is never logged


def test_each_exchange_is_a_new_id_jag(broker: Broker) -> None:
    id_token = id_token_for(broker)["id_token"]
    first = jwt.get_unverified_claims(token_exchange(broker, id_token).json()["access_token"])
    second = jwt.get_unverified_claims(token_exchange(broker, id_token).json()["access_token"])
    assert first["jti"] != second["jti"]


@pytest.mark.parametrize(
    ("user", "scope", "granted"),
    [
        ("alice", "crm:read", "crm:read"),
        ("alice", "crm:write unknown:scope", "crm:read crm:write"),  # write implies read
        ("bob", None, "crm:read"),
        ("bob", "crm:read crm:write", "crm:read"),  # requested ∩ policy
        ("bob", "crm:write", "crm:read"),  # closed over implies, as at authorization, then ∩ policy
    ],
)
def test_scopes_are_the_request_within_the_policy(broker: Broker, user: str, scope: str | None, granted: str) -> None:
    answer = token_exchange(broker, id_token_for(broker, user)["id_token"], scope=scope)
    assert answer.status_code == 200, answer.text
    assert answer.json()["scope"] == granted
    assert jwt.get_unverified_claims(answer.json()["access_token"])["scope"] == granted


def test_a_scope_outside_the_policy_is_refused(broker: Broker) -> None:
    alice = id_token_for(broker)["id_token"]
    answer = token_exchange(broker, alice, scope="notes:read")  # our MCP server's scope, not this one's
    assert "none of the requested scopes" in refused(answer, "invalid_scope")
    # A resource of that server no rule grants anything of
    wiki = token_exchange(broker, alice, resource="https://wiki.example.com/mcp")
    assert "no scope of this resource" in refused(wiki, "invalid_scope")


def test_the_id_token_of_another_client_is_refused(broker: Broker) -> None:
    other = register(broker)["client_id"]
    foreign = id_token_for(broker, client_id=other)["id_token"]
    assert "not a valid ID token issued to this client" in refused(token_exchange(broker, foreign), "invalid_grant")
    # ... and that client, which has no client id at the external server, gets no ID-JAG itself
    refused(token_exchange(broker, foreign, client_id=other), "unauthorized_client")


def test_an_expired_id_token_is_refused(redis_server: RedisServer, slapd: Slapd) -> None:
    with idp_broker(redis_server, slapd, tokens="  id_token_ttl: 1") as broker:
        id_token = id_token_for(broker)["id_token"]
        time.sleep(2.1)
        refused(token_exchange(broker, id_token), "invalid_grant")


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_forged_id_tokens_are_refused(broker: Broker) -> None:
    tokens = id_token_for(broker)
    id_token = tokens["id_token"]
    header = jwt.get_unverified_header(id_token)
    claims = jwt.get_unverified_claims(id_token)
    public = next(k for k in httpx.get(f"{broker.base}/jwks.json").json()["keys"] if k["kid"] == header["kid"])
    stranger = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    head, body, signature = id_token.split(".")
    forgeries = {
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': header['kid']})}.{body}.",
        "HS256 with the public key": jwt.encode(
            claims, json.dumps(public), algorithm="HS256", headers={"kid": header["kid"], "typ": "JWT"}
        ),
        "another key, our kid": jwt.encode(
            claims, stranger.decode(), algorithm="ES256", headers={"kid": header["kid"], "typ": "JWT"}
        ),
        "claims changed": f"{head}.{_b64({**claims, 'sub': 'demo-ldap:mallory'})}.{signature}",
        "an access token": tokens["access_token"],  # typ at+jwt, aud the MCP server
        "not a JWT": "ey.ey.ey",
    }
    for name, forged in forgeries.items():
        answer = token_exchange(broker, forged)
        assert answer.status_code == 400, name
        assert answer.json()["error"] == "invalid_grant", name


def test_unknown_audience_and_resource_are_invalid_target(broker: Broker) -> None:
    id_token = id_token_for(broker)["id_token"]
    assert "audience" in refused(
        token_exchange(broker, id_token, audience="https://evil.example.com"), "invalid_target"
    )
    assert "resource" in refused(
        token_exchange(broker, id_token, resource="https://hr.example.com/mcp"), "invalid_target"
    )
    # Our own MCP server is no resource of the external server
    refused(token_exchange(broker, id_token, resource="http://127.0.0.1:8001/mcp"), "invalid_target")
    refused(token_exchange(broker, id_token, audience=broker.base), "invalid_target")


def test_malformed_requests(broker: Broker) -> None:
    id_token = id_token_for(broker)["id_token"]
    for missing in ("subject_token", "subject_token_type", "requested_token_type", "audience", "resource"):
        assert missing in refused(token_exchange(broker, id_token, **{missing: None}), "invalid_request"), missing
    refused(
        token_exchange(broker, id_token, subject_token_type="urn:ietf:params:oauth:token-type:saml2"),
        "invalid_request",
    )
    refused(
        token_exchange(broker, id_token, requested_token_type="urn:ietf:params:oauth:token-type:access_token"),
        "invalid_request",
    )
    refused(token_exchange(broker, id_token, actor_token=id_token), "invalid_request")
    refused(token_exchange(broker, id_token, client_id="nobody-registered-this"), "invalid_client")


def test_a_revoked_sign_in_gives_no_id_jag(broker: Broker) -> None:
    tokens = id_token_for(broker)
    revoked = httpx.post(f"{broker.base}/revoke", data={"token": tokens["refresh_token"], "client_id": AGENT})
    assert revoked.status_code == 200
    assert "ended or was revoked" in refused(token_exchange(broker, tokens["id_token"]), "invalid_grant")


def test_a_user_removed_from_the_granting_group_gets_no_id_jag(broker: Broker, slapd: Slapd) -> None:
    with directory_user(slapd, ("mcp-readers",)) as (uid, dn):
        id_token = id_token_for(broker, uid)["id_token"]
        assert token_exchange(broker, id_token).json()["scope"] == "crm:read"
        leave_group(slapd, dn, "mcp-readers")  # the directory is asked again before each ID-JAG
        assert "no scope" in refused(token_exchange(broker, id_token), "invalid_scope")


def test_a_deprovisioned_user_gets_no_id_jag(broker: Broker, slapd: Slapd) -> None:
    with directory_user(slapd, ("mcp-readers", "mcp-writers")) as (uid, dn):
        tokens = id_token_for(broker, uid)
        as_admin(slapd, lambda admin: admin.delete(dn))
        assert "no longer valid" in refused(token_exchange(broker, tokens["id_token"]), "invalid_grant")
        # ... and the sign-in is over: its refresh token is dead too
        answer = httpx.post(
            f"{broker.base}/token",
            data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": AGENT},
        )
        assert answer.json()["error"] == "invalid_grant"


def test_discovery_lists_the_token_exchange_grant(broker: Broker) -> None:
    doc = httpx.get(f"{broker.base}/.well-known/openid-configuration").json()
    assert TOKEN_EXCHANGE in doc["grant_types_supported"]
