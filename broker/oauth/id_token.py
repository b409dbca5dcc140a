"""OpenID Connect ID tokens (OpenID Connect Core 1.0 §2, §3.1.3.7): the broker signs MCP clients in.

An authorization code flow whose scope held ``openid`` gets an ID token at the code exchange:
``iss`` the broker, ``aud`` the client, ``sub`` the grant's subject (stable per provider and
user), ``nonce`` from the authorization request, ``auth_time``, ``email`` where known, and
``sid``, the grant it belongs to. Signed by the key ring that signs access tokens, with
``typ: JWT`` (never ``at+jwt``: an ID token is no access token, and resource servers refuse it).

The client may present it back, as the ``subject_token`` of a token exchange
(:mod:`broker.oauth.token_exchange`); :func:`verify_id_token` checks it is one of ours, for that
client, unexpired.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from jose import jwt
from jose.exceptions import JOSEError

from broker.oauth.signing import KeyRing
from mcp_broker_verifier.jws import is_canonical_jws

ID_TOKEN_TYP = "JWT"  # noqa: S105 (a media type, not a secret)
ALGORITHMS = ("ES256", "RS256")  # what the key ring may sign with; nothing else is ever accepted
CLAIMS_SUPPORTED = ("iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "email", "sid", "jti")


@dataclass(frozen=True)
class IdTokenClaims:
    """What an ID token the broker issued says."""

    subject: str
    client_id: str
    grant_id: str
    email: str | None
    auth_time: int | None
    expires_at: int


def mint_id_token(
    keyring: KeyRing,
    *,
    issuer: str,
    subject: str,
    client_id: str,
    grant_id: str,
    ttl: int,
    nonce: str | None = None,
    auth_time: int | None = None,
    email: str | None = None,
    now: float | None = None,
) -> str:
    issued = int(time.time() if now is None else now)
    key = keyring.current
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": subject,
        "aud": client_id,
        "iat": issued,
        "exp": issued + ttl,
        "sid": grant_id,
        "jti": secrets.token_urlsafe(16),
    }
    if nonce is not None:
        claims["nonce"] = nonce
    if auth_time is not None:
        claims["auth_time"] = auth_time
    if email:
        claims["email"] = email
    token: str = jwt.encode(claims, key.private, algorithm=key.alg, headers={"kid": key.kid, "typ": ID_TOKEN_TYP})
    return token


class NotOurIdToken(Exception):
    """The token is no ID token this broker issued to this client, or it has expired; the
    message says why (for the log, not the client)."""


def verify_id_token(keyring: KeyRing, token: str, *, issuer: str, client_id: str) -> IdTokenClaims:
    """The claims of an unexpired ID token the broker issued to ``client_id``; else
    :class:`NotOurIdToken`. The algorithm comes from our own key (by ``kid``), never from the
    token alone; ``typ`` must be ``JWT`` (an access token or an ID-JAG is refused)."""
    if not is_canonical_jws(token):
        raise NotOurIdToken("not a compact JWS")
    try:
        header = jwt.get_unverified_header(token)
    except JOSEError:
        raise NotOurIdToken("unreadable JOSE header") from None
    if header.get("typ") != ID_TOKEN_TYP:
        raise NotOurIdToken(f"typ {str(header.get('typ'))[:40]!r} is not an ID token's")
    alg = header.get("alg")
    key = next((k for k in keyring.jwks()["keys"] if k.get("kid") == header.get("kid")), None)
    if key is None or alg not in ALGORITHMS or key.get("alg") != alg:
        raise NotOurIdToken("not signed by a key of this broker")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[alg],
            issuer=issuer,
            audience=client_id,
            options={"require_exp": True, "require_iat": True, "require_sub": True, "require_aud": True},
        )
    except jwt.ExpiredSignatureError:
        raise NotOurIdToken("expired") from None
    except jwt.JWTClaimsError as exc:
        raise NotOurIdToken(f"claims refused: {exc}") from None
    except JOSEError:
        raise NotOurIdToken("bad signature") from None
    # python-jose accepts an ``aud`` list containing the client; ours are single strings.
    if claims.get("aud") != client_id:
        raise NotOurIdToken("aud is not this client alone")
    sub, sid = claims.get("sub"), claims.get("sid")
    if not isinstance(sub, str) or not isinstance(sid, str):
        raise NotOurIdToken("sub or sid missing")
    email = claims.get("email")
    auth_time = claims.get("auth_time")
    return IdTokenClaims(
        subject=sub,
        client_id=client_id,
        grant_id=sid,
        email=email if isinstance(email, str) else None,
        auth_time=auth_time if isinstance(auth_time, int) else None,
        expires_at=int(claims["exp"]),
    )
