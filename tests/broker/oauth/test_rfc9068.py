"""JWT access tokens (RFC 9068): shape, audience binding, and forgeries refused."""

from __future__ import annotations

import base64
import json
import time

import httpx
from jose import jwt

from tests.broker.flows import INTROSPECTOR_SECRET, RESOURCE, Broker, tokens_for
from tests.jws import non_canonical, signature_variants


def test_token_shape(broker: Broker) -> None:
    client, tokens = tokens_for(broker)
    token = tokens["access_token"]
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "ES256"
    jwks = httpx.get(f"{broker.base}/jwks.json").json()
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    claims = jwt.decode(token, key, algorithms=["ES256"], audience=RESOURCE, issuer=broker.base)
    assert set(claims) == {"iss", "sub", "aud", "client_id", "scope", "iat", "nbf", "exp", "jti", "sid", "auth_time"}
    assert claims["client_id"] == client["client_id"]
    assert claims["exp"] - claims["iat"] == 300
    assert "groups" not in claims
    assert len(token) < 1000


def _introspect(broker: Broker, token: str) -> dict[str, object]:
    response = httpx.post(
        f"{broker.base}/introspect", data={"token": token}, auth=("notes-server", INTROSPECTOR_SECRET)
    )
    return dict(response.json())


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_alg_none_is_refused(broker: Broker) -> None:
    _, tokens = tokens_for(broker)
    claims = jwt.get_unverified_claims(tokens["access_token"])
    forged = f"{_b64({'alg': 'none', 'typ': 'at+jwt'})}.{_b64(claims)}."
    assert _introspect(broker, forged) == {"active": False}


def test_hs256_signed_with_the_public_key_is_refused(broker: Broker) -> None:
    _, tokens = tokens_for(broker)
    header = jwt.get_unverified_header(tokens["access_token"])
    claims = jwt.get_unverified_claims(tokens["access_token"])
    claims["exp"] = int(time.time()) + 3600
    public = json.dumps(
        next(k for k in httpx.get(f"{broker.base}/jwks.json").json()["keys"] if k["kid"] == header["kid"])
    )
    forged = jwt.encode(claims, public, algorithm="HS256", headers={"kid": header["kid"], "typ": "at+jwt"})
    assert _introspect(broker, forged) == {"active": False}


def test_only_the_canonical_spelling_of_an_access_token_is_ours(broker: Broker) -> None:
    client, tokens = tokens_for(broker)
    token = tokens["access_token"]
    assert {"signature: padded", "signature: an unused bit set"} <= set(signature_variants(token))
    for change, spelled in non_canonical(token):
        assert _introspect(broker, spelled) == {"active": False}, change
        revoked = httpx.post(f"{broker.base}/revoke", data={"token": spelled, "client_id": client["client_id"]})
        assert revoked.status_code == 200, change  # RFC 7009 §2.2: an invalid token is no error
    assert _introspect(broker, token)["active"] is True  # no other spelling revoked its grant
