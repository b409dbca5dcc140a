"""Signing keys for access tokens (RFC 9068), shared by every broker replica through Redis.

The ring is a Redis hash of key records. Each key has an ``activate_at``: the newest key
whose time has come signs, the next key is published in the JWKS a full rotation interval
before it signs, and a superseded key stays published for ``key_overlap`` so tokens it
signed keep verifying. Private keys are stored encrypted (AES-256-GCM under the key
encryption key, with the kid as associated data); keys are parsed once, never per request.
Alternatively keys are read from PEM files in ``keys_dir`` (a mounted Kubernetes secret).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jose import jwk
from jose.backends.base import Key

from broker.oauth.sealing import Envelope, decode_kek
from broker.oauth.sealing import KeyConfigError as KeyConfigError  # re-exported: KeyRing raises it
from broker.store.base import SigningKeyStore

Algorithm = Literal["ES256", "RS256"]


def new_kek() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


_ES256 = ec.ECDSA(hashes.SHA256())


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


@functools.lru_cache(maxsize=64)
def _header_segment(alg: str, kid: str, typ: str) -> bytes:
    """A JWS protected header, encoded once per key and type (compact JSON, sorted keys)."""
    return _b64(json.dumps({"alg": alg, "kid": kid, "typ": typ}, separators=(",", ":"), sort_keys=True).encode())


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: Algorithm
    activate_at: float
    private: Key
    public_jwk: dict[str, Any]
    signer: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = field(repr=False, compare=False)

    def sign_jwt(self, claims: Mapping[str, Any], *, typ: str) -> str:
        """A compact JWS (RFC 7515 §7.1) of ``claims`` under this key: header ``alg``, ``kid``,
        ``typ``. Signed with ``cryptography`` directly: the header is encoded once per key, and an
        ES256 signature is the raw r || s of RFC 7518 §3.4."""
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = _header_segment(self.alg, self.kid, typ) + b"." + payload
        if isinstance(self.signer, ec.EllipticCurvePrivateKey):
            r, s = decode_dss_signature(self.signer.sign(signing_input, _ES256))
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        else:
            signature = self.signer.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return (signing_input + b"." + _b64(signature)).decode()


def _generate_pem(alg: Algorithm) -> bytes:
    private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load(kid: str, alg: Algorithm, activate_at: float, pem: bytes) -> SigningKey:
    private = jwk.construct(pem.decode(), alg)
    public = private.public_key().to_dict()
    public.update({"kid": kid, "use": "sig", "alg": alg})
    signer = serialization.load_pem_private_key(pem, password=None)
    wanted = ec.EllipticCurvePrivateKey if alg == "ES256" else rsa.RSAPrivateKey
    if not isinstance(signer, wanted) or (
        isinstance(signer, ec.EllipticCurvePrivateKey) and signer.curve.name != "secp256r1"
    ):
        raise ValueError(f"not an {alg} private key")
    return SigningKey(kid=kid, alg=alg, activate_at=activate_at, private=private, public_jwk=public, signer=signer)


class KeyRing:
    """The set of signing keys; ``current`` signs, ``jwks()`` publishes."""

    def __init__(
        self,
        store: SigningKeyStore | None,
        *,
        algorithm: Algorithm = "ES256",
        kek: str | None = None,
        keys_dir: str | None = None,
        rotation_interval: int = 30 * 86400,
        overlap: int = 86400,
    ) -> None:
        if keys_dir is None and kek is None:
            raise KeyConfigError("set signing.key_encryption_key (or signing.keys_dir) to sign tokens")
        self._store = store
        self._alg = algorithm
        self._kek = Envelope(decode_kek(kek)) if kek else None
        self._keys_dir = keys_dir
        self._rotation = rotation_interval
        self._overlap = overlap
        self._ring: list[SigningKey] = []
        self._jwks: dict[str, Any] = {"keys": []}

    @property
    def ready(self) -> bool:
        return self._current_or_none() is not None

    def _current_or_none(self, now: float | None = None) -> SigningKey | None:
        return self._current_or_none_of(self._ring, time.time() if now is None else now)

    @property
    def current(self) -> SigningKey:
        key = self._current_or_none()
        if key is None:
            raise KeyConfigError("no signing key is loaded")
        return key

    def jwks(self) -> dict[str, Any]:
        return self._jwks

    def _encrypt(self, kid: str, pem: bytes) -> str:
        assert self._kek is not None
        return self._kek.seal(pem, kid.encode())

    def _decrypt(self, kid: str, blob: str) -> bytes:
        assert self._kek is not None
        try:
            return self._kek.open(blob, kid.encode())
        except Exception:
            raise KeyConfigError(
                f"signing key {kid} cannot be decrypted: signing.key_encryption_key differs from the one that stored it"
            ) from None

    async def refresh(self) -> None:
        """Load the ring, creating or rotating keys when due. Safe to call from every replica."""
        if self._keys_dir is not None:
            self._ring = self._from_dir(Path(self._keys_dir))
        else:
            self._ring = await self._from_store()
        now = time.time()
        current = self._current_or_none(now)
        published = [
            k
            for k in self._ring
            if current is None
            or k.activate_at >= current.activate_at
            or k.activate_at + self._rotation + self._overlap > now
        ]
        self._jwks = {"keys": [k.public_jwk for k in sorted(published, key=lambda k: -k.activate_at)]}

    def _from_dir(self, folder: Path) -> list[SigningKey]:
        ring = []
        for pem_file in sorted(folder.glob("*.pem")):
            try:
                ring.append(_load(pem_file.stem, self._alg, pem_file.stat().st_mtime, pem_file.read_bytes()))
            except Exception as exc:
                raise KeyConfigError(f"{pem_file}: not a usable {self._alg} private key ({exc})") from None
        if not ring:
            raise KeyConfigError(f"signing.keys_dir {folder} holds no *.pem key")
        return ring

    async def _from_store(self) -> list[SigningKey]:
        assert self._store is not None
        ring = [self._record_to_key(record) for record in await self._store.signing_keys()]
        ring = [k for k in ring if k.alg == self._alg]
        now = time.time()
        current = self._current_or_none_of(ring, now)
        upcoming = [k for k in ring if k.activate_at > now]
        due_current = current is None
        due_next = not upcoming
        if not (due_current or due_next):
            return ring
        # One replica creates keys; the others wait for the lock and read what it wrote.
        lock = await self._store.lock_signing_keys(30)
        if lock is not None:
            try:
                ring = [k for k in map(self._record_to_key, await self._store.signing_keys()) if k.alg == self._alg]
                current = self._current_or_none_of(ring, now)
                if current is None:
                    current = await self._create(now)
                    ring.append(current)
                if not [k for k in ring if k.activate_at > now]:
                    ring.append(await self._create(current.activate_at + self._rotation))
                # Forget keys whose tokens have all expired.
                cutoff = now - self._rotation - self._overlap
                stale = [k.kid for k in ring if k.activate_at < cutoff and k is not current]
                if stale:
                    await self._store.drop_signing_keys(stale)
                    ring = [k for k in ring if k.kid not in stale]
            finally:
                await self._store.unlock_signing_keys(lock)
            return ring
        for _ in range(50):
            await asyncio.sleep(0.1)
            if not await self._store.signing_keys_locked():
                break
        return [k for k in map(self._record_to_key, await self._store.signing_keys()) if k.alg == self._alg]

    @staticmethod
    def _current_or_none_of(ring: list[SigningKey], now: float) -> SigningKey | None:
        live = [k for k in ring if k.activate_at <= now]
        return max(live, key=lambda k: k.activate_at) if live else None

    async def _create(self, activate_at: float) -> SigningKey:
        assert self._store is not None
        kid = f"{time.strftime('%Y%m%d', time.gmtime(activate_at))}-{secrets.token_hex(4)}"
        pem = _generate_pem(self._alg)
        record = {"kid": kid, "alg": self._alg, "activate_at": activate_at, "key": self._encrypt(kid, pem)}
        await self._store.save_signing_key(kid, record)
        return _load(kid, self._alg, activate_at, pem)

    def _record_to_key(self, record: dict[str, Any]) -> SigningKey:
        kid = str(record["kid"])
        return _load(kid, record["alg"], float(record["activate_at"]), self._decrypt(kid, record["key"]))
