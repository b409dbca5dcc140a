"""OpenID Connect Back-Channel Logout 1.0 (§2.5-2.8), the RP's side: the OP posts a
``logout_token`` to ``/backchannel-logout/{provider_id}`` when a user logs out there.

The token is verified by the provider (``verify_logout_token``: signature with the OP's JWKS,
``iss``, ``aud``, ``iat``, ``exp``, ``events``, ``sid`` or ``sub``, no ``nonce``), its ``jti`` is
spent once across replicas (``Store.claim_assertion_jti``, kept until the token could no longer
be accepted), and then: with ``sid``, the grants started from that upstream session are revoked
(the sid comes from the ID token at sign-in: ``Identity.upstream_session``); with ``sub`` alone,
every grant of that user at the provider. A refused token changes nothing (§2.8: 400).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from broker.signals.effects import Outcome, Signal, SignalEffects
from providers.base import ProviderError


class LogoutToken(Protocol):
    jti: str
    sub: str | None
    sid: str | None
    expires_at: float


@runtime_checkable
class BackchannelLogoutProvider(Protocol):
    """A provider that verifies its OP's logout tokens (providers.oidc)."""

    id: str
    issuer: str

    async def verify_logout_token(self, raw: str) -> LogoutToken: ...


@dataclass(frozen=True)
class LogoutRefused(Exception):
    """§2.8: the request fails (400); ``description`` is safe to show the OP."""

    description: str


async def receive(provider: object, provider_id: str, raw: str | None, effects: SignalEffects) -> Outcome:
    signal = Signal(source="backchannel_logout", kind="logout", provider_id=provider_id)
    if not isinstance(provider, BackchannelLogoutProvider):  # none of that id, or not OpenID Connect
        effects.refused(signal, "invalid_request", "no OpenID Connect provider of that id")
        raise LogoutRefused("no OpenID Connect provider of that id")
    if not raw:
        effects.refused(signal, "invalid_request", "no logout_token")
        raise LogoutRefused("logout_token is required")
    try:
        token = await provider.verify_logout_token(raw)
    except ProviderError as exc:
        effects.refused(signal, "invalid_request", str(exc))
        raise LogoutRefused("the logout token is not valid") from None
    signal = Signal(
        source="backchannel_logout",
        kind="logout",
        provider_id=provider_id,
        signal_id=token.jti,
        received_at=signal.received_at,
        received_clock=signal.received_clock,
        detail={k: v for k, v in (("sid", token.sid), ("sub", token.sub)) if v is not None},
    )

    async def revoke() -> Outcome:
        if token.sid is not None:
            return await effects.revoke_session(provider_id, token.sid, reason="backchannel_logout", signal=signal)
        assert token.sub is not None
        return await effects.revoke_user(provider_id, subject=token.sub, reason="backchannel_logout", signal=signal)

    issuer = "backchannel-logout\n" + provider.issuer
    outcome = await effects.once(signal, issuer, token.jti, token.expires_at, revoke, what="logout token")
    if outcome is None:
        raise LogoutRefused("the logout token was already used")
    return outcome
