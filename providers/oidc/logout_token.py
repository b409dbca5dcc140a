"""Logout token validation, OpenID Connect Back-Channel Logout 1.0 §2.6.

Checked here, in the spec's order: a signature by a key of the OP's JWKS (the provider's shared
cache) with an asymmetric algorithm the OP announced for ID tokens (the header's ``alg`` is
matched against that list, never trusted: ``none`` and HMAC never pass); ``iss`` equal to the
issuer; ``aud`` containing our client id; ``iat`` present and within the leeway of now (an old
token is refused even without ``exp``: §2.4 lets the RP bound its age); ``exp`` if present;
``jti`` present (its single use is the caller's, across replicas, ``Store.claim_assertion_jti``);
``events`` holding ``http://schemas.openid.net/event/backchannel-logout`` with a JSON object;
``sid`` or ``sub``; and no ``nonce`` (§2.4: it is how a logout token differs from an ID token).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from providers.base import UpstreamRejected
from providers.oidc.id_token import OpJwtVerifier, signed_claims

EVENT = "http://schemas.openid.net/event/backchannel-logout"
MAX_AGE = 300  # seconds: an iat older than this is refused (a logout token is sent at once)
_ACCEPTED_TYP = {"logout+jwt", "application/logout+jwt", "jwt", "application/jwt"}


@dataclass(frozen=True)
class LogoutToken:
    """A verified logout token: the OP's ``sub`` and ``sid`` (at least one), its ``jti`` and when
    the record of the ``jti`` may end (epoch seconds)."""

    jti: str
    sub: str | None
    sid: str | None
    expires_at: float


class LogoutTokenVerifier(OpJwtVerifier):
    """Verifies logout tokens issued by ``issuer`` to ``client_id``."""

    max_age = MAX_AGE

    async def verify(self, raw: str, *, algorithms: Sequence[str]) -> LogoutToken:
        claims, _ = await signed_claims(
            raw, self.keys, algorithms=algorithms, accepted_typ=_ACCEPTED_TYP, what="logout token"
        )
        return self._check(claims)

    def _check(self, claims: dict[str, Any]) -> LogoutToken:
        now = self._clock()
        if claims.get("iss") != self.issuer:
            raise UpstreamRejected(f"logout token iss {str(claims.get('iss'))[:120]!r} is not the provider's issuer")
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if self.client_id not in audiences:
            raise UpstreamRejected("logout token aud does not name this client")
        iat = claims.get("iat")
        if not isinstance(iat, int | float) or isinstance(iat, bool):
            raise UpstreamRejected("logout token has no iat")
        if iat > now + self.leeway or iat < now - self.max_age - self.leeway:
            raise UpstreamRejected("logout token iat is outside the accepted window")
        exp = claims.get("exp")
        if exp is not None and (not isinstance(exp, int | float) or isinstance(exp, bool) or exp < now - self.leeway):
            raise UpstreamRejected("logout token has expired")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise UpstreamRejected("logout token has no jti")
        events = claims.get("events")
        if not isinstance(events, dict) or not isinstance(events.get(EVENT), dict):
            raise UpstreamRejected("logout token events claim lacks the back-channel logout event")
        sub, sid = claims.get("sub"), claims.get("sid")
        sub = sub if isinstance(sub, str) and sub else None
        sid = sid if isinstance(sid, str) and sid else None
        if sub is None and sid is None:
            raise UpstreamRejected("logout token has neither sid nor sub")
        if "nonce" in claims:
            raise UpstreamRejected("logout token carries a nonce")
        # The jti is remembered as long as the token could be accepted again.
        until = max(float(exp) if exp is not None else 0.0, float(iat) + self.max_age) + self.leeway
        return LogoutToken(jti=jti, sub=sub, sid=sid, expires_at=until)
