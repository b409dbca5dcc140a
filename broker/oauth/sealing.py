"""The one AES-256-GCM envelope, and encryption at rest for provider-private data.

:class:`Envelope` is the only sealing code in the broker. Its wire format, which data already
in Redis is stored in, is the standard base64 (RFC 4648 §4, with padding) of a 12-byte random
nonce followed by the ciphertext and its 16-byte tag; associated data, if any, is not stored.
Three users share it, each with its own key and associated data:

* :class:`Sealer`: upstream refresh tokens and flow secrets, under a key derived (HKDF-SHA256,
  info ``mcp-broker private v1``) from ``signing.key_encryption_key``, with a context string as
  associated data. Without that key (keys mounted from ``keys_dir``), private data is simply not
  persisted.
* ``broker.oauth.tokens.seal_for``: a rotated refresh token's successor response, under a key
  derived (info ``mcp-broker successor v1``) from the old refresh token, no associated data.
* ``broker.oauth.signing.KeyRing``: private signing keys, under the key encryption key itself,
  with the kid as associated data.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

NONCE_BYTES = 12


class KeyConfigError(Exception):
    """The key encryption key or a mounted key is unusable."""


def decode_kek(text: str) -> bytes:
    """The 32-byte key encryption key from its configured base64 (either alphabet, padding optional)."""
    try:
        raw = base64.b64decode(text.strip() + "=" * (-len(text.strip()) % 4), altchars=b"-_", validate=False)
    except (binascii.Error, ValueError):
        raise KeyConfigError("signing.key_encryption_key is not base64") from None
    if len(raw) < 32:
        raise KeyConfigError("signing.key_encryption_key must decode to at least 32 bytes")
    return raw[:32]


class Envelope:
    """AES-256-GCM under one key: ``seal`` gives base64(nonce || ciphertext || tag), ``open`` reverses it."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @classmethod
    def derived(cls, secret: bytes, info: bytes) -> Envelope:
        """An envelope under a 32-byte key derived from ``secret`` by HKDF-SHA256 (no salt)."""
        return cls(HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret))

    def seal(self, plaintext: bytes, aad: bytes | None = None) -> str:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return base64.b64encode(nonce + self._aead.encrypt(nonce, plaintext, aad)).decode()

    def open(self, blob: str, aad: bytes | None = None) -> bytes:
        """The plaintext; raises (``cryptography``'s ``InvalidTag``, or ``ValueError``) on a wrong
        key, wrong associated data, or a blob that is not one of ours."""
        raw = base64.b64decode(blob)
        return self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], aad)


class Sealer:
    def __init__(self, kek: str | None) -> None:
        self._envelope: Envelope | None = None
        if kek:
            self._envelope = Envelope.derived(decode_kek(kek), b"mcp-broker private v1")

    @property
    def enabled(self) -> bool:
        return self._envelope is not None

    def seal(self, data: dict[str, Any], *, context: str) -> str | None:
        if self._envelope is None or not data:
            return None
        return self._envelope.seal(json.dumps(data).encode(), context.encode())

    def open(self, blob: str | None, *, context: str) -> dict[str, Any]:
        if self._envelope is None or not blob:
            return {}
        opened: dict[str, Any] = json.loads(self._envelope.open(blob, context.encode()))
        return opened
