"""The signing key ring in a real Redis: shared by replicas, encrypted at rest, rotated."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest
import redis.asyncio as aioredis
from jose import jwt

from broker.oauth.signing import Algorithm, KeyConfigError, KeyRing, new_kek
from broker.store.keys import Keys
from broker.store.redis_store import RedisStore
from mcp_broker_verifier.jws import is_canonical_jws


async def test_replicas_share_one_ring(redis_client: aioredis.Redis) -> None:
    kek = new_kek()
    rings = [KeyRing(RedisStore(redis_client, Keys()), kek=kek) for _ in range(4)]
    await asyncio.gather(*(ring.refresh() for ring in rings))
    kids = {ring.current.kid for ring in rings}
    assert len(kids) == 1
    assert all(len(ring.jwks()["keys"]) == 2 for ring in rings)  # current and next
    stored = await redis_client.hgetall(Keys().signing_keys())
    assert len(stored) == 2
    for raw in stored.values():
        record = json.loads(raw)
        assert "PRIVATE KEY" not in record["key"]  # encrypted at rest


async def test_a_token_signed_by_one_replica_verifies_with_the_jwks_of_another(redis_client: aioredis.Redis) -> None:
    kek = new_kek()
    one, two = KeyRing(RedisStore(redis_client, Keys()), kek=kek), KeyRing(RedisStore(redis_client, Keys()), kek=kek)
    await one.refresh()
    await two.refresh()
    key = one.current
    token = jwt.encode({"sub": "a"}, key.private, algorithm="ES256", headers={"kid": key.kid})
    public = next(k for k in two.jwks()["keys"] if k["kid"] == key.kid)
    assert jwt.decode(token, public, algorithms=["ES256"])["sub"] == "a"


async def test_wrong_key_encryption_key_is_a_clear_error(redis_client: aioredis.Redis) -> None:
    await KeyRing(RedisStore(redis_client, Keys()), kek=new_kek()).refresh()
    with pytest.raises(KeyConfigError, match="key_encryption_key differs"):
        await KeyRing(RedisStore(redis_client, Keys()), kek=new_kek()).refresh()


async def test_next_key_takes_over_after_the_rotation_interval(redis_client: aioredis.Redis) -> None:
    ring = KeyRing(RedisStore(redis_client, Keys()), kek=new_kek(), rotation_interval=1, overlap=60)
    await ring.refresh()
    first = ring.current.kid
    await asyncio.sleep(1.1)
    await ring.refresh()
    assert ring.current.kid != first
    published = {k["kid"] for k in ring.jwks()["keys"]}
    assert first in published  # still verifiable during the overlap
    assert len(published) == 3


async def test_rs256(redis_client: aioredis.Redis) -> None:
    ring = KeyRing(RedisStore(redis_client, Keys()), kek=new_kek(), algorithm="RS256")
    await ring.refresh()
    assert ring.jwks()["keys"][0]["kty"] == "RSA"


def test_a_key_encryption_key_or_keys_dir_is_required() -> None:
    with pytest.raises(KeyConfigError, match="key_encryption_key"):
        KeyRing(None)
    with pytest.raises(KeyConfigError, match="32 bytes"):
        KeyRing(None, kek="c2hvcnQ")


async def test_keys_from_a_mounted_folder(tmp_path: object) -> None:
    from pathlib import Path

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder = Path(str(tmp_path))
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (folder / "2026-11.pem").write_bytes(pem)
    ring = KeyRing(None, keys_dir=str(folder))
    await ring.refresh()
    assert ring.current.kid == "2026-11"
    assert ring.current.activate_at <= time.time()
    (folder / "2026-11.pem").write_text("not a key")
    with pytest.raises(KeyConfigError, match="not a usable ES256 private key"):
        await ring.refresh()


@pytest.mark.parametrize("algorithm", ["ES256", "RS256"])
async def test_sign_jwt_is_a_compact_jws_any_jose_library_verifies(
    redis_client: aioredis.Redis, algorithm: Algorithm
) -> None:
    ring = KeyRing(RedisStore(redis_client, Keys(prefix=f"s{algorithm}")), kek=new_kek(), algorithm=algorithm)
    await ring.refresh()
    key = ring.current
    claims = {"sub": "alice", "aud": "https://notes.example/mcp", "scope": "notes:read", "exp": 2_000_000_000}
    token = key.sign_jwt(claims, typ="at+jwt")
    assert is_canonical_jws(token)
    assert jwt.get_unverified_header(token) == {"alg": algorithm, "kid": key.kid, "typ": "at+jwt"}
    public = next(k for k in ring.jwks()["keys"] if k["kid"] == key.kid)
    assert jwt.decode(token, public, algorithms=[algorithm], audience=claims["aud"]) == claims
    # Each signature is fresh (ECDSA draws a nonce), and a second token of the same key reuses its header.
    again = key.sign_jwt(claims, typ="at+jwt")
    assert again.split(".")[0] == token.split(".")[0]
    assert (again != token) is (algorithm == "ES256")
    if algorithm == "ES256":
        assert len(base64.urlsafe_b64decode(token.split(".")[2] + "==")) == 64  # raw r || s (RFC 7518 §3.4)
