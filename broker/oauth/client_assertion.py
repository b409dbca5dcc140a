"""``private_key_jwt`` client authentication (RFC 7523 §2.2 and §3, OpenID Connect Core §9).

A pre-registered client with a JSON Web Key Set (``registration.static_clients[].jwks``)
authenticates at the token endpoint (and revocation, introspection) with
``client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`` and a
``client_assertion`` it signed: ``iss`` and ``sub`` its client id, ``aud`` the broker's issuer or
the endpoint's URL, ``exp`` at most five minutes ahead, a ``jti`` used once (across replicas:
``Store.claim_assertion_jti`` under ``client:<client id>``). Asymmetric algorithms only.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from typing import Any

from jose import jwt
from jose.exceptions import JOSEError

from broker.oauth.errors import InvalidClient
from broker.store.base import Store
from mcp_broker_verifier.jws import is_canonical_jws

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
MAX_LIFETIME = 300
CLOCK_SKEW = 30


def unverified_issuer(assertion: str) -> str | None:
    """The assertion's ``iss`` before any check (to find the client when ``client_id`` is absent)."""
    try:
        issuer = jwt.get_unverified_claims(assertion).get("iss")
    except (JOSEError, ValueError, AttributeError):
        return None
    return issuer if isinstance(issuer, str) else None


async def verify_client_assertion(
    assertion: str,
    *,
    client_id: str,
    jwks: Mapping[str, Any],
    audiences: Collection[str],
    store: Store,
    now: float | None = None,
) -> None:
    """Raise :class:`InvalidClient` unless ``assertion`` authenticates ``client_id``."""

    def refuse(why: str) -> InvalidClient:
        return InvalidClient(detail=f"client assertion of {client_id[:100]!r} refused: {why}")

    if not is_canonical_jws(assertion):
        raise refuse("not a compact JWS")
    try:
        header = jwt.get_unverified_header(assertion)
    except JOSEError:
        raise refuse("unreadable header") from None
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in ALGORITHMS:
        raise refuse(f"algorithm {str(alg)[:20]!r}")
    keys = [
        k
        for k in jwks.get("keys", [])
        if isinstance(k, dict) and (kid is None or k.get("kid") == kid) and k.get("alg", alg) == alg
    ]
    claims: dict[str, Any] | None = None
    for key in keys:
        try:
            claims = jwt.decode(assertion, key, algorithms=[alg], options={"verify_aud": False, "verify_exp": False})
            break
        except JOSEError:
            continue
    if claims is None:
        raise refuse("no key verifies its signature")
    clock = time.time() if now is None else now
    audience = claims.get("aud")
    named = audience if isinstance(audience, list) else [audience]
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        raise refuse("iss and sub must be the client id")
    if not any(a in audiences for a in named):
        raise refuse(f"aud {str(audience)[:200]!r}")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or exp + CLOCK_SKEW < clock:
        raise refuse("expired or no exp")
    if exp > clock + MAX_LIFETIME + CLOCK_SKEW:
        raise refuse(f"exp more than {MAX_LIFETIME} s ahead")
    nbf = claims.get("nbf")
    if isinstance(nbf, int | float) and nbf > clock + CLOCK_SKEW:
        raise refuse("not yet valid")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > 200:
        raise refuse("no jti")
    if not await store.claim_assertion_jti(f"client:{client_id}", jti, float(exp) + CLOCK_SKEW):
        raise refuse("jti replayed")
