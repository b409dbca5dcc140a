"""An MCP server authenticating with ``private_key_jwt`` (RFC 7523 §2.2) for the delegated exchange:
its assertion signed by a key of its configured ``jwks``, addressed to the broker, fresh, its
``jti`` used once. Against the real broker and Redis, with a token from a real sign-in."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jose import jwk, jwt

from broker.app import create_app
from broker.config import parse_config
from broker.devstack import RedisServer, Slapd, free_port
from tests.broker.delegation.test_exchange import ACCESS_TOKEN, DELEGATION, TICKETS, TOKEN_EXCHANGE, verified
from tests.broker.flows import Broker, broker_yaml, tokens_for
from tests.http import running

CLIENT = "notes-keys"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _key() -> tuple[str, dict[str, Any]]:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = jwk.construct(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "ES256",
    ).to_dict()
    return pem, {**public, "kid": "k1", "alg": "ES256", "use": "sig"}


PEM, PUBLIC = _key()
OTHER_PEM, _ = _key()


@contextmanager
def keyed_broker(redis_server: RedisServer, slapd: Slapd) -> Iterator[Broker]:
    port = free_port()
    text = broker_yaml(port, redis_server.url, slapd, prefix=f"t{secrets.token_hex(6)}", extra=DELEGATION)
    client = f"""  static_clients:
    - client_id: {CLIENT}
      client_name: Notes MCP server (keys)
      redirect_uris: ["https://notes.example.com/unused"]
      application_type: web
      mcp_server: notes
      jwks: {json.dumps({"keys": [PUBLIC]})}
"""
    config = parse_config(text.replace("  static_clients:\n", client, 1))
    with running(create_app(config), port):
        yield Broker(config.issuer, config)


@pytest.fixture
def broker(redis_server: RedisServer, slapd: Slapd) -> Iterator[Broker]:
    with keyed_broker(redis_server, slapd) as running_broker:
        yield running_broker


def assertion(broker: Broker, pem: str = PEM, **over: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": CLIENT,
        "sub": CLIENT,
        "aud": f"{broker.base}/token",
        "iat": now,
        "exp": now + 60,
        "jti": secrets.token_urlsafe(12),
        **over,
    }
    signed: str = jwt.encode(claims, pem, algorithm="ES256", headers={"kid": "k1"})
    return signed


def exchange(broker: Broker, subject_token: str, client_assertion: str) -> httpx.Response:
    return httpx.post(
        f"{broker.base}/token",
        data={
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": subject_token,
            "subject_token_type": ACCESS_TOKEN,
            "audience": TICKETS,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion,
        },
    )


def test_private_key_jwt_authenticates_the_mcp_server(broker: Broker) -> None:
    metadata = httpx.get(f"{broker.base}/.well-known/oauth-authorization-server").json()
    assert "private_key_jwt" in metadata["token_endpoint_auth_methods_supported"]
    _, tokens = tokens_for(broker, "alice")
    first = assertion(broker)
    response = exchange(broker, tokens["access_token"], first)
    assert response.status_code == 200, response.text
    assert verified(broker, response.json()["access_token"], TICKETS)["act"]["client_id"] == CLIENT
    assert exchange(broker, tokens["access_token"], assertion(broker, aud=broker.base)).status_code == 200

    refusals = {
        "replayed jti": first,
        "another key": assertion(broker, OTHER_PEM),
        "another audience": assertion(broker, aud="https://elsewhere.example.com/token"),
        "expired": assertion(broker, iat=int(time.time()) - 600, exp=int(time.time()) - 300),
        "too long-lived": assertion(broker, exp=int(time.time()) + 3600),
        "another issuer": assertion(broker, iss="someone", sub="someone"),
        "no jti": assertion(broker, jti=None),
    }
    for why, presented in refusals.items():
        refused = exchange(broker, tokens["access_token"], presented)
        assert refused.status_code == 401, (why, refused.text)
        assert refused.json()["error"] == "invalid_client", why
    # One method at a time, and a keyed client has no secret.
    both = httpx.post(
        f"{broker.base}/token",
        data={
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": tokens["access_token"],
            "subject_token_type": ACCESS_TOKEN,
            "audience": TICKETS,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion(broker),
            "client_secret": "x" * 40,
        },
    )
    assert both.status_code == 400, both.text
    secret = httpx.post(
        f"{broker.base}/token",
        data={
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": tokens["access_token"],
            "subject_token_type": ACCESS_TOKEN,
        },
        auth=(CLIENT, "x" * 40),
    )
    assert secret.status_code == 401, secret.text
