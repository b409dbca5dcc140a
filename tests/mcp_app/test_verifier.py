"""The reusable token verifier against keys from a real key ring: what passes and what never does."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from jose import jwt

from broker.oauth.signing import KeyRing, new_kek
from broker.store.keys import Keys
from broker.store.redis_store import RedisStore
from mcp_broker_verifier.jws import is_canonical_jws
from mcp_broker_verifier.verifier import BrokerTokenVerifier, JwksCache
from tests.jws import non_canonical, signature_variants

ISSUER = "https://auth.example.com"
RESOURCE = "https://mcp.example.com/mcp"


@pytest.fixture
async def ring(redis_client: aioredis.Redis) -> KeyRing:
    keyring = KeyRing(RedisStore(redis_client, Keys()), kek=new_kek())
    await keyring.refresh()
    return keyring


@pytest.fixture
async def verifier(ring: KeyRing) -> AsyncIterator[BrokerTokenVerifier]:
    jwks = ring.jwks()
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=jwks))
    async with httpx.AsyncClient(transport=transport) as http:
        yield BrokerTokenVerifier(issuer=ISSUER, resource=RESOURCE, jwks=JwksCache(f"{ISSUER}/jwks.json", http))


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "sub": "alice",
        "aud": RESOURCE,
        "client_id": "c1",
        "scope": "notes:read",
        "iat": now,
        "exp": now + 300,
        "jti": "j1",
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def sign(ring: KeyRing, body: dict[str, Any], **headers: Any) -> str:
    key = ring.current
    return jwt.encode(body, key.private, algorithm=key.alg, headers={"kid": key.kid, "typ": "at+jwt", **headers})


async def test_a_good_token(ring: KeyRing, verifier: BrokerTokenVerifier) -> None:
    token = await verifier.verify_token(sign(ring, claims()))
    assert token is not None
    assert (token.subject, token.client_id, token.scopes, token.resource) == ("alice", "c1", ["notes:read"], RESOURCE)


@pytest.mark.parametrize(
    "bad",
    [
        {"aud": "https://other.example.com/mcp"},
        {"iss": "https://evil.example.com"},
        {"exp": int(time.time()) - 120},
        {"nbf": int(time.time()) + 600},
        {"client_id": None},
        {"sub": None},
    ],
)
async def test_refused_claims(ring: KeyRing, verifier: BrokerTokenVerifier, bad: dict[str, Any]) -> None:
    assert await verifier.verify_token(sign(ring, claims(**bad))) is None


class Counted:
    """A metrics hook that remembers what it was told."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def hit(self) -> None:
        self.seen.append("hit")

    def miss(self) -> None:
        self.seen.append("miss")


async def test_metrics_are_optional_and_a_hook_hears_each_hit_and_miss(ring: KeyRing) -> None:
    jwks = ring.jwks()
    counted = Counted()
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda _: httpx.Response(200, json=jwks))) as http:
        plain = BrokerTokenVerifier(issuer=ISSUER, resource=RESOURCE, jwks=JwksCache(f"{ISSUER}/jwks.json", http))
        hooked = BrokerTokenVerifier(
            issuer=ISSUER, resource=RESOURCE, jwks=JwksCache(f"{ISSUER}/jwks.json", http), metrics=counted
        )
        token = sign(ring, claims())
        for _ in range(3):
            assert await plain.verify_token(token) is not None
            assert await hooked.verify_token(token) is not None
        assert await hooked.verify_token(sign(ring, claims(aud="https://other.example.com/mcp"))) is None
    assert (plain.misses, plain.hits) == (1, 2)
    assert counted.seen == ["miss", "hit", "hit", "miss"]


async def test_wrong_typ_is_refused(ring: KeyRing, verifier: BrokerTokenVerifier) -> None:
    assert await verifier.verify_token(sign(ring, claims(), typ="JWT")) is None


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_alg_none_is_refused(ring: KeyRing, verifier: BrokerTokenVerifier) -> None:
    token = f"{_b64({'alg': 'none', 'typ': 'at+jwt', 'kid': ring.current.kid})}.{_b64(claims())}."
    assert await verifier.verify_token(token) is None


async def test_hs256_signed_with_the_public_key_is_refused(ring: KeyRing, verifier: BrokerTokenVerifier) -> None:
    public = json.dumps(ring.current.public_jwk)
    token = jwt.encode(claims(), public, algorithm="HS256", headers={"kid": ring.current.kid, "typ": "at+jwt"})
    assert await verifier.verify_token(token) is None


async def test_unknown_kid_refetches_at_most_once_per_interval(ring: KeyRing) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(200, json=ring.jwks())

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        verifier = BrokerTokenVerifier(issuer=ISSUER, resource=RESOURCE, jwks=JwksCache("https://x/jwks", http))
        good = sign(ring, claims())
        for _ in range(3):
            assert await verifier.verify_token(good) is not None
        for _ in range(5):
            assert await verifier.verify_token(sign(ring, claims(), kid="unknown")) is None
    assert calls == 1


@pytest.mark.parametrize("typ", [None, 7, ["at+jwt"], {"a": 1}])
async def test_a_typ_that_is_not_text_is_refused_not_a_crash(
    ring: KeyRing, verifier: BrokerTokenVerifier, typ: object
) -> None:
    key = ring.current
    header = {"alg": key.alg, "kid": key.kid, "typ": typ}
    encoded = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    assert await verifier.verify_token(f"{encoded}.e30.AA") is None


async def test_a_token_without_aud_or_iss_is_refused(ring: KeyRing, verifier: BrokerTokenVerifier) -> None:
    assert await verifier.verify_token(sign(ring, claims(aud=None))) is None
    assert await verifier.verify_token(sign(ring, claims(iss=None))) is None


async def test_a_failing_jwks_is_not_asked_on_every_request(ring: KeyRing) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(503, text="down")

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        jwks = JwksCache("https://x/jwks", http, min_refetch_interval=30)
        verifier = BrokerTokenVerifier(issuer=ISSUER, resource=RESOURCE, jwks=jwks)
        tokens = [sign(ring, claims(jti=f"j{n}"), kid=f"k{n}") for n in range(50)]
        results = await asyncio.gather(*(verifier.verify_token(t) for t in tokens))
        assert results == [None] * 50
        assert calls == 1  # while no key is known, at most one attempt a second
        assert jwks.last_error == "HTTPStatusError"


async def test_keys_past_their_age_are_fetched_again_and_a_pulled_key_stops_working(ring: KeyRing) -> None:
    published = ring.jwks()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=published)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        jwks = JwksCache("https://x/jwks", http, min_refetch_interval=0.05, max_age=0.1)
        verifier = BrokerTokenVerifier(issuer=ISSUER, resource=RESOURCE, jwks=jwks)
        assert await verifier.verify_token(sign(ring, claims(jti="a"))) is not None
        published = {"keys": []}  # the broker pulled the key (say it leaked)
        await asyncio.sleep(0.2)
        assert await verifier.verify_token(sign(ring, claims(jti="b"))) is None


async def test_only_the_canonical_spelling_of_a_token_verifies(ring: KeyRing, verifier: BrokerTokenVerifier) -> None:
    token = sign(ring, claims())
    assert {"signature: padded", "signature: an unused bit set"} <= set(signature_variants(token))
    for change, spelled in non_canonical(token):
        assert await verifier.verify_token(spelled) is None, change
    assert await verifier.verify_token(token) is not None


@pytest.mark.parametrize(
    "token",
    ["", "a.b", "a.b.c.d", "eyJh..c2ln", "a.b.c\n", " a.b.c", "a.b.c=", "YQ.YQ.Y", "YQ.YQ.YR", "YQ.YQ.YQ=="],
)
def test_the_shape_check(token: str) -> None:
    assert not is_canonical_jws(token)
    assert is_canonical_jws("YQ.YWI.YWJj")  # "a", "ab", "abc": 4, 2 and 0 unused bits, all zero
