"""OpenID Connect ID tokens at the code exchange (OIDC Core §3.1.3.3, §3.1.3.7) and their discovery
fields, against the real broker, directory and Redis."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from jose import jwt

from tests.broker.flows import (
    INTROSPECTOR_SECRET,
    REDIRECT,
    Broker,
    authorize_params,
    exchange,
    login,
    pkce_pair,
    register,
)


def verified(broker: Broker, token: str, audience: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a token the broker signed, checked with its published JWKS."""
    header = jwt.get_unverified_header(token)
    key = next(k for k in httpx.get(f"{broker.base}/jwks.json").json()["keys"] if k["kid"] == header["kid"])
    claims = jwt.decode(token, key, algorithms=["ES256"], audience=audience, issuer=broker.base)
    return header, claims


def signed_in(broker: Broker, username: str = "alice", **over: str | None) -> tuple[str, dict[str, Any]]:
    client_id = register(broker)["client_id"]
    auth = login(broker, client_id, username, **over)
    response = exchange(broker, client_id, auth)
    assert response.status_code == 200, response.text
    return client_id, response.json()


def test_openid_scope_gives_an_id_token_with_the_nonce(broker: Broker) -> None:
    client_id, tokens = signed_in(broker, scope="openid notes:read", nonce="n-0S6_WzA2Mj")
    header, claims = verified(broker, tokens["id_token"], client_id)
    assert header["typ"] == "JWT"  # never at+jwt: an ID token is no access token
    assert header["alg"] == "ES256"
    assert set(claims) == {"iss", "sub", "aud", "iat", "exp", "nonce", "auth_time", "email", "sid", "jti"}
    assert claims["aud"] == client_id
    assert claims["nonce"] == "n-0S6_WzA2Mj"
    assert claims["email"] == "alice@demo.local"
    assert claims["exp"] - claims["iat"] == 3600  # tokens.id_token_ttl
    assert claims["iat"] - 5 <= claims["auth_time"] <= claims["iat"]
    access = jwt.get_unverified_claims(tokens["access_token"])
    assert claims["sub"] == access["sub"]  # the grant's subject: stable per provider and user
    assert claims["sid"] == access["sid"]
    assert tokens["scope"] == "notes:read"  # openid is no scope of the MCP server
    assert access["scope"] == "notes:read"


def test_the_subject_is_stable_across_sign_ins(broker: Broker) -> None:
    first_client, first = signed_in(broker, scope="openid")
    second_client, second = signed_in(broker, scope="openid")
    assert (
        verified(broker, first["id_token"], first_client)[1]["sub"]
        == (verified(broker, second["id_token"], second_client)[1]["sub"])
    )


def test_openid_alone_grants_what_the_policy_gives(broker: Broker) -> None:
    client_id, tokens = signed_in(broker, scope="openid")
    assert tokens["scope"] == "notes:read notes:write"
    _, claims = verified(broker, tokens["id_token"], client_id)
    assert "nonce" not in claims  # none was sent


def test_no_openid_no_id_token(broker: Broker) -> None:
    _, tokens = signed_in(broker, scope="notes:read", nonce="ignored")
    assert "id_token" not in tokens


def test_bob_gets_an_id_token_without_the_scope_he_lacks(broker: Broker) -> None:
    client_id, tokens = signed_in(broker, "bob", scope="openid notes:read notes:write")
    assert tokens["scope"] == "notes:read"
    assert verified(broker, tokens["id_token"], client_id)[1]["email"] == "bob@demo.local"


def test_an_id_token_is_no_access_token(broker: Broker) -> None:
    _, tokens = signed_in(broker, scope="openid")
    answer = httpx.post(
        f"{broker.base}/introspect", data={"token": tokens["id_token"]}, auth=("notes-server", INTROSPECTOR_SECRET)
    )
    assert answer.json() == {"active": False}


def test_a_long_nonce_is_refused(broker: Broker) -> None:
    client_id = register(broker)["client_id"]
    _, challenge = pkce_pair()
    params = authorize_params(client_id, challenge, scope="openid", nonce="n" * 2001)
    with broker.client() as browser:
        answer = browser.get("/authorize", params=params)
    assert answer.status_code in (302, 303), answer.text
    location = answer.headers["location"]
    assert location.startswith(REDIRECT)
    query = parse_qs(urlsplit(location).query)
    assert query["error"] == ["invalid_request"]
    assert "nonce" in query["error_description"][0]


def test_discovery_announces_the_openid_provider(broker: Broker) -> None:
    for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
        doc = httpx.get(f"{broker.base}{path}").json()
        assert "openid" in doc["scopes_supported"]
        assert doc["id_token_signing_alg_values_supported"] == ["ES256"]
        assert doc["subject_types_supported"] == ["public"]
        assert {"sub", "aud", "nonce", "auth_time", "email"} <= set(doc["claims_supported"])
