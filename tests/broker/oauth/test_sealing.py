"""The one AES-GCM envelope: each of its three users keeps the wire format already stored in Redis.

The ``_old_*`` functions are the sealing code as it stood before the envelope was shared
(issue 10's tree), copied verbatim: what they sealed must still open, and what the envelope
seals must open with them.
"""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from broker.oauth.sealing import NONCE_BYTES, Envelope, Sealer, decode_kek
from broker.oauth.signing import KeyRing, new_kek
from broker.oauth.tokens import open_for, seal_for
from broker.store.client import RedisClient
from broker.store.keys import Keys
from broker.store.redis_store import RedisStore


def _old_private_aead(kek: str) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"mcp-broker private v1").derive(decode_kek(kek))
    return AESGCM(key)


def _old_seal_private(kek: str, data: dict[str, Any], context: str) -> str:
    nonce = secrets.token_bytes(12)
    sealed = _old_private_aead(kek).encrypt(nonce, json.dumps(data).encode(), context.encode())
    return base64.b64encode(nonce + sealed).decode()


def _old_open_private(kek: str, blob: str, context: str) -> dict[str, Any]:
    raw = base64.b64decode(blob)
    opened: dict[str, Any] = json.loads(_old_private_aead(kek).decrypt(raw[:12], raw[12:], context.encode()))
    return opened


def _old_successor_aead(token: str) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"mcp-broker successor v1").derive(token.encode())
    return AESGCM(key)


def _old_seal_for(token: str, payload: dict[str, Any]) -> str:
    nonce = secrets.token_bytes(12)
    sealed = _old_successor_aead(token).encrypt(nonce, json.dumps(payload).encode(), None)
    return base64.b64encode(nonce + sealed).decode()


def _old_open_for(token: str, blob: str) -> dict[str, Any]:
    raw = base64.b64decode(blob)
    data: dict[str, Any] = json.loads(_old_successor_aead(token).decrypt(raw[:12], raw[12:], None))
    return data


def _old_encrypt_key(kek: str, kid: str, pem: bytes) -> str:
    nonce = secrets.token_bytes(12)
    return base64.b64encode(nonce + AESGCM(decode_kek(kek)).encrypt(nonce, pem, kid.encode())).decode()


def _old_decrypt_key(kek: str, kid: str, blob: str) -> bytes:
    raw = base64.b64decode(blob)
    return AESGCM(decode_kek(kek)).decrypt(raw[:12], raw[12:], kid.encode())


def test_envelope_layout_is_standard_base64_of_nonce_ciphertext_tag() -> None:
    blob = Envelope(secrets.token_bytes(32)).seal(b"abc", b"ctx")
    raw = base64.b64decode(blob, validate=True)
    assert base64.b64encode(raw).decode() == blob  # standard alphabet, padded
    assert len(raw) == NONCE_BYTES + 3 + 16


def test_envelope_refuses_a_wrong_key_or_wrong_associated_data() -> None:
    key = secrets.token_bytes(32)
    blob = Envelope(key).seal(b"secret", b"ctx-a")
    assert Envelope(key).open(blob, b"ctx-a") == b"secret"
    with pytest.raises(InvalidTag):
        Envelope(key).open(blob, b"ctx-b")
    with pytest.raises(InvalidTag):
        Envelope(secrets.token_bytes(32)).open(blob, b"ctx-a")


def test_private_data_sealed_by_the_old_code_still_opens_and_back() -> None:
    kek = new_kek()
    sealer = Sealer(kek)
    data = {"refresh_token": "upstream-rt", "n": 1}
    assert sealer.open(_old_seal_private(kek, data, "ldap:alice"), context="ldap:alice") == data
    sealed = sealer.seal(data, context="ldap:alice")
    assert sealed is not None
    assert _old_open_private(kek, sealed, "ldap:alice") == data
    with pytest.raises(InvalidTag):
        sealer.open(sealed, context="ldap:bob")


def test_a_successor_sealed_by_the_old_code_still_opens_and_back() -> None:
    token = "rt." + secrets.token_urlsafe(16) + "." + secrets.token_urlsafe(32)
    payload = {"access_token": "at", "refresh_token": "rt.next", "expires_in": 300}
    assert open_for(token, _old_seal_for(token, payload)) == payload
    assert _old_open_for(token, seal_for(token, payload)) == payload


async def test_a_signing_key_stored_by_the_old_code_still_loads(redis_client: RedisClient) -> None:
    kek = new_kek()
    keys = Keys("sealcompat")
    first = KeyRing(RedisStore(redis_client, keys), kek=kek)
    await first.refresh()
    # Re-store every key of the ring as the old code sealed it, then load the ring afresh.
    records = await redis_client.hgetall(keys.signing_keys())
    assert records
    for field, value in records.items():
        record = json.loads(value)
        pem = _old_decrypt_key(kek, record["kid"], record["key"])  # the envelope's output opens the old way
        record["key"] = _old_encrypt_key(kek, record["kid"], pem)
        await redis_client.hset(keys.signing_keys(), field, json.dumps(record))
    second = KeyRing(RedisStore(redis_client, keys), kek=kek)
    await second.refresh()
    assert second.current.kid == first.current.kid
    assert second.jwks() == first.jwks()
