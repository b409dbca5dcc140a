"""Encryption at rest for provider-private data (upstream refresh tokens, flow secrets).

AES-256-GCM under a key derived (HKDF) from ``signing.key_encryption_key``. Without that key
(keys mounted from ``keys_dir``), private data is simply not persisted.
"""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from broker.oauth.signing import decode_kek


class Sealer:
    def __init__(self, kek: str | None) -> None:
        self._aead: AESGCM | None = None
        if kek:
            key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"mcp-broker private v1").derive(
                decode_kek(kek)
            )
            self._aead = AESGCM(key)

    @property
    def enabled(self) -> bool:
        return self._aead is not None

    def seal(self, data: dict[str, Any], *, context: str) -> str | None:
        if self._aead is None or not data:
            return None
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, json.dumps(data).encode(), context.encode())
        return base64.b64encode(nonce + sealed).decode()

    def open(self, blob: str | None, *, context: str) -> dict[str, Any]:
        if self._aead is None or not blob:
            return {}
        raw = base64.b64decode(blob)
        opened: dict[str, Any] = json.loads(self._aead.decrypt(raw[:12], raw[12:], context.encode()))
        return opened
