"""Token formats: authorization codes, opaque refresh tokens, and RFC 9068 JWT access tokens.

Codes and refresh tokens embed the grant id (``rt.<grant>.<secret>``) so the store finds the
grant's slot from the token alone; only a SHA-256 of the whole token is ever stored.
An access token presented back to the broker must be a compact JWS in canonical base64url
(RFC 7515 §2, RFC 4648 §5) before its signature is even looked at.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

from jose import jwt

from broker.oauth.sealing import Envelope
from broker.oauth.signing import KeyRing
from broker.store.records import Grant
from mcp_broker_verifier.jws import unverified_header

Kind = Literal["ac", "rt"]
_HANDLE = re.compile(r"^(ac|rt)\.([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{43})$")


def new_grant_id() -> str:
    return secrets.token_urlsafe(16)


def new_handle(kind: Kind, grant_id: str) -> str:
    return f"{kind}.{grant_id}.{secrets.token_urlsafe(32)}"


def parse_handle(kind: Kind, token: str | None) -> str | None:
    """The grant id inside a code or refresh token of ``kind``, or None if it is not one."""
    if not token:
        return None
    match = _HANDLE.match(token)
    if match is None or match.group(1) != kind:
        return None
    return match.group(2)


def grant_of_handle(handle: str) -> str:
    """The grant id inside a token handle (an access token's ``sid``: ``Grant.token_handle``)."""
    return handle.partition(".")[0]


def _envelope(token: str) -> Envelope:
    return Envelope.derived(token.encode(), b"mcp-broker successor v1")


def seal_for(token: str, payload: dict[str, Any]) -> str:
    """Encrypt ``payload`` so only a holder of ``token`` can read it (the successor response of
    a rotated refresh token, handed again to a concurrent or retried refresh)."""
    return _envelope(token).seal(json.dumps(payload).encode())


def open_for(token: str, blob: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_envelope(token).open(blob))
    return data


@dataclass(frozen=True)
class AccessToken:
    token: str
    expires_at: int
    jti: str


def mint_access_token(
    keyring: KeyRing,
    *,
    issuer: str,
    subject: str,
    client_id: str,
    resource: str,
    scopes: list[str] | tuple[str, ...] | frozenset[str],
    grant_id: str,
    ttl: int,
    auth_time: int | None = None,
    now: float | None = None,
) -> AccessToken:
    """An RFC 9068 access token, audience-bound to one resource, with no group list inside."""
    issued = int(time.time() if now is None else now)
    key = keyring.current
    jti = secrets.token_urlsafe(16)
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": subject,
        "aud": resource,
        "client_id": client_id,
        "scope": " ".join(sorted(scopes)),
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl,
        "jti": jti,
        "sid": grant_id,
    }
    if auth_time is not None:
        claims["auth_time"] = auth_time
    return AccessToken(token=key.sign_jwt(claims, typ="at+jwt"), expires_at=issued + ttl, jti=jti)


def mint_for_grant(
    keyring: KeyRing,
    *,
    issuer: str,
    grant: Grant,
    scopes: list[str] | tuple[str, ...] | frozenset[str],
    ttl: int,
    now: float | None = None,
) -> AccessToken:
    """An access token of ``grant``: its subject, client, resource (the audience) and sign-in time."""
    return mint_access_token(
        keyring,
        issuer=issuer,
        subject=grant.subject,
        client_id=grant.client_id,
        resource=grant.resource,
        scopes=scopes,
        grant_id=grant.token_handle,  # the sid resource servers find in the revoked set once it ends
        ttl=ttl,
        auth_time=grant.auth_time,
        now=now,
    )


def verify_access_token(keyring: KeyRing, token: str, *, issuer: str) -> dict[str, Any] | None:
    """Claims of one of our own access tokens (signature, ``typ``, ``iss``, ``exp``), else None."""
    from jose.exceptions import JOSEError

    header = unverified_header(token)
    if header is None or header.get("typ") != "at+jwt" or header.get("alg") not in ("ES256", "RS256"):
        return None
    key = next((k for k in keyring.jwks()["keys"] if k.get("kid") == header.get("kid")), None)
    if key is None or key.get("alg") != header["alg"]:
        return None
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=[header["alg"]], issuer=issuer, options={"verify_aud": False, "require_exp": True}
        )
    except JOSEError:
        return None
    return claims
