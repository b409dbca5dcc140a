"""ID token validation pieces: the JWKS cache (refetch on an unknown key id, rate-limited) and
the verifier's refusals, against the emulator's published keys."""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator

import httpx
import jwt
import pytest

from providers.base import UpstreamRejected, UpstreamUnavailable
from providers.entra.idtoken import IdTokenVerifier, JwksCache, nonce_hash
from tests.clock import Clock
from tests.emulators.entra import CLIENT_ID, OTHER_TENANT, TENANT, EntraEmulator


@pytest.fixture
async def http(entra: EntraEmulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=entra.ca_file), timeout=5) as client:
        yield client


def keys_url(entra: EntraEmulator) -> str:
    return f"{entra.base}/{TENANT}/discovery/v2.0/keys"


def fetches(entra: EntraEmulator) -> int:
    return entra.calls.count(f"GET /{TENANT}/discovery/v2.0/keys")


async def test_unknown_kid_refetches_at_most_once_per_interval(entra: EntraEmulator, http: httpx.AsyncClient) -> None:
    clock = Clock()
    cache = JwksCache(keys_url(entra), http, refetch_interval=30, clock=clock)
    first = entra.keys[0].kid
    assert (await cache.key(first)) is not None
    assert (await cache.key(first)) is not None
    assert fetches(entra) == 1

    entra.rotate_keys()
    rotated = entra.keys[0].kid
    assert await cache.key(rotated) is None  # fetched 0 s ago: no refetch yet
    assert await cache.key("forged") is None
    assert fetches(entra) == 1

    clock.now += 30
    assert await cache.key(rotated) is not None  # rotation picked up
    assert await cache.key(first) is not None  # the old key stays published
    assert await cache.key("forged") is None  # and a forged kid cannot force another fetch
    assert fetches(entra) == 2


async def test_stale_keys_are_refetched_and_survive_an_outage(entra: EntraEmulator, http: httpx.AsyncClient) -> None:
    clock = Clock()
    cache = JwksCache(keys_url(entra), http, max_age=3600, clock=clock)
    kid = entra.keys[0].kid
    assert await cache.key(kid) is not None
    clock.now += 3601
    entra.tenant_names.pop(TENANT)  # the key set URL now answers 400
    assert await cache.key(kid) is not None  # a known key stays usable while Entra is down
    with pytest.raises(UpstreamUnavailable, match="HTTP 400"):
        await JwksCache(keys_url(entra), http, clock=clock).key(kid)  # nothing known: unavailable


def _token(entra: EntraEmulator, **claims: object) -> str:
    now = int(time.time())
    body: dict[str, object] = {
        "aud": CLIENT_ID,
        "iss": entra.issuer(TENANT),
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "tid": TENANT,
        "oid": "00000000-0000-0000-0000-00000000000a",
        "sub": "pairwise",
        "nonce": nonce_hash("the-nonce"),
        "ver": "2.0",
    }
    body.update(claims)
    key = entra.keys[0]
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key.private, "RS256", headers={"kid": key.kid})


async def test_verifier_refusals(entra: EntraEmulator, http: httpx.AsyncClient) -> None:
    verifier = IdTokenVerifier(
        client_id=CLIENT_ID,
        authority_host=entra.base,
        tenants=[TENANT],
        jwks=JwksCache(keys_url(entra), http),
    )
    claims = await verifier.verify(_token(entra), nonce="the-nonce")
    assert claims["oid"] == "00000000-0000-0000-0000-00000000000a"

    cases = {
        "nonce": (_token(entra), "another-nonce"),
        "not allowed": (_token(entra, tid=OTHER_TENANT, iss=entra.issuer(OTHER_TENANT)), "the-nonce"),
        "Invalid issuer": (_token(entra, iss=f"https://login.microsoftonline.com/{TENANT}/v2.0"), "the-nonce"),
        "no tenant id": (_token(entra, tid=None), "the-nonce"),
        "no object id": (_token(entra, oid=None), "the-nonce"),
        "Invalid audience": (_token(entra, aud="api://something-else"), "the-nonce"),
        "iat": (_token(entra, iat=None), "the-nonce"),
        "not a JWS": ("not-a-token", "the-nonce"),
    }
    for message, (token, nonce) in cases.items():
        with pytest.raises(UpstreamRejected, match=message):
            await verifier.verify(token, nonce=nonce)

    hs256 = jwt.encode({"tid": TENANT}, "a-shared-secret-of-32-bytes-or-more!", "HS256", headers={"kid": "k"})
    with pytest.raises(UpstreamRejected, match="only RS256"):
        await verifier.verify(hs256, nonce="the-nonce")
    unsigned = jwt.encode({"tid": TENANT}, "", "none")
    with pytest.raises(UpstreamRejected, match="only RS256"):
        await verifier.verify(unsigned, nonce="the-nonce")
