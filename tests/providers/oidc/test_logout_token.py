"""OpenID Connect Back-Channel Logout 1.0 §2.4/§2.6, framework-free: what makes a logout token
valid, each refusal on its own (``providers.oidc.logout_token``)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from providers.base import UpstreamRejected
from providers.oidc.id_token import KeySet
from providers.oidc.logout_token import EVENT, LogoutTokenVerifier

ISSUER = "https://op.example.com"
CLIENT = "broker-at-op"
KEY = RSAKey.generate_key(2048, parameters={"kid": "k1", "alg": "RS256"})
STRANGER = RSAKey.generate_key(2048, parameters={"kid": "k1", "alg": "RS256"})  # same kid, other key


def verifier() -> LogoutTokenVerifier:
    async def fetch() -> object:
        return {"keys": [KEY.as_dict(private=False)]}

    return LogoutTokenVerifier(ISSUER, CLIENT, KeySet(fetch))


def claims(**over: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "iss": ISSUER,
        "aud": CLIENT,
        "iat": int(time.time()),
        "exp": int(time.time()) + 120,
        "jti": "jti-1",
        "sid": "op-session-1",
        "sub": "alice",
        "events": {EVENT: {}},
    }
    values.update(over)
    return {k: v for k, v in values.items() if v is not None}


def signed(values: dict[str, Any], key: Any = KEY, alg: str = "RS256", typ: str = "logout+jwt") -> str:
    return jwt.encode({"alg": alg, "kid": "k1", "typ": typ}, values, key, algorithms=[alg])


async def test_a_valid_token_names_the_session_and_user() -> None:
    token = await verifier().verify(signed(claims()), algorithms=["RS256"])
    assert (token.jti, token.sid, token.sub) == ("jti-1", "op-session-1", "alice")
    assert token.expires_at >= time.time() + 120  # the jti is kept while the token could be replayed


async def test_sid_or_sub_alone_is_enough() -> None:
    assert (await verifier().verify(signed(claims(sub=None)), algorithms=["RS256"])).sub is None
    assert (await verifier().verify(signed(claims(sid=None, exp=None)), algorithms=["RS256"])).sid is None
    audiences = claims(aud=["another-rp", CLIENT])
    assert (await verifier().verify(signed(audiences), algorithms=["RS256"])).jti == "jti-1"


def _unsigned(values: dict[str, Any]) -> str:
    import base64
    import json

    def b64(part: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none', 'typ': 'logout+jwt'})}.{b64(values)}."


REFUSED: dict[str, str] = {
    "unsigned (alg none)": _unsigned(claims()),
    "wrongly signed": signed(claims(), key=STRANGER),
    "HMAC with a secret": signed(claims(), key=OctKey.generate_key(256), alg="HS256"),
    "wrong issuer": signed(claims(iss="https://evil.example.com")),
    "wrong audience": signed(claims(aud="someone-else")),
    "expired": signed(claims(iat=int(time.time()) - 200, exp=int(time.time()) - 100)),
    "old iat": signed(claims(iat=int(time.time()) - 3600, exp=None)),
    "iat in the future": signed(claims(iat=int(time.time()) + 3600)),
    "no iat": signed(claims(iat=None)),
    "no jti": signed(claims(jti=None)),
    "with a nonce": signed(claims(nonce="n-1")),
    "no events": signed(claims(events=None)),
    "another event": signed(claims(events={"http://schemas.openid.net/event/other": {}})),
    "event not an object": signed(claims(events={EVENT: "yes"})),
    "neither sid nor sub": signed(claims(sid=None, sub=None)),
    "an ID token's typ": signed(claims(), typ="at+jwt"),
    "not a JWS": "not-a-jwt",
}


@pytest.mark.parametrize("case", sorted(REFUSED))
async def test_refused(case: str) -> None:
    with pytest.raises(UpstreamRejected):
        await verifier().verify(REFUSED[case], algorithms=["RS256"])
