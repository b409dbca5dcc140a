"""What an upstream signal does to the user's grants: the one place every receiver calls.

* :meth:`SignalEffects.revoke_user` - every grant of the user is revoked and the revocations are
  announced to resource servers (``Store.revoke_grant``: mcp_app refuses the tokens within ~10 ms);
  the user's shared re-check answer is dropped so the next refresh asks upstream.
* :meth:`SignalEffects.revoke_session` - the grants started from one upstream session (an OIDC
  ``sid``, recorded from the ID token at sign-in) are revoked alike.
* :meth:`SignalEffects.reapply_policy` - the policy is evaluated again for each live grant of the
  user with the groups the signal carries (or the provider's answer now). A grant that keeps every
  scope is left alone; a grant that loses some is **narrowed** in place (``Store.narrow_grant``:
  its stored scopes shrink, and its access tokens issued so far, which carry the wider scope, end
  at once like a revoked grant's; the client's next refresh gets the narrower scopes without a new
  sign-in); a grant left with no scope is **revoked**.
* :meth:`SignalEffects.record_only` - nothing changes; the signal is kept and audited.

Each returns an :class:`Outcome`. Every signal is audited on arrival (``signal_received``) and
with its effect (``signal_applied``: kind, provider, subject, effect, grants revoked and narrowed;
each narrowed grant also has its own ``grant_narrowed`` event), kept in a
bounded per-provider list (``Store.record_signal``, read by ``GET /admin/signals``), and a
signal that revoked or narrowed something is measured from its arrival to the last revocation
announced (``mcpb_signal_to_revocation_seconds``).

Subjects: ``subject`` is the broker's subject (``qualified_subject(provider_id, local)``); the
provider's local id is qualified here when it lacks the ``{provider_id}:`` prefix.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from broker.audit import audit
from broker.metrics import SIGNAL_TO_REVOCATION, SIGNALS
from broker.policy import Policy
from broker.store.base import Store
from broker.store.records import Grant
from providers.base import Identity, qualified_subject

Effect = Literal["revoke_user", "revoke_session", "reapply_policy", "record_only"]
Source = Literal["backchannel_logout", "scim", "ssf", "admin"]

RECENT_SIGNALS = 200  # kept per provider (Store.record_signal)
NARROW_ATTEMPTS = 3  # narrowings of one grant tried before it is revoked instead


@dataclass(frozen=True)
class Signal:
    """One signal as it arrived. ``kind`` names what it said, by its source's vocabulary
    (``logout``, ``user_deactivated``, ``https://schemas.openid.net/secevent/caep/event-type/session-revoked``);
    ``signal_id`` is its own id where it has one (a ``jti``, a SCIM request's resource id)."""

    source: Source
    kind: str
    provider_id: str
    signal_id: str | None = None
    received_at: float = field(default_factory=time.time)  # epoch seconds, for the record
    received_clock: float = field(default_factory=time.perf_counter)  # for the latency metric
    detail: Mapping[str, Any] = field(default_factory=dict)  # shown in the record (no secrets)


@dataclass(frozen=True)
class Outcome:
    """What a signal did: its effect, the user it named (broker subject, when known), the grants
    revoked, the grants narrowed (scopes removed, earlier tokens ended), and the grants looked at
    and left unchanged."""

    effect: Effect
    subject: str | None
    revoked: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    note: str | None = None
    narrowed: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "effect": self.effect,
            "subject": self.subject,
            "revoked": list(self.revoked),
            "narrowed": list(self.narrowed),
            "unchanged": list(self.unchanged),
            "note": self.note,
        }


# Looks the user of a grant up upstream now (GrantService.current_identity): reapply_policy's
# groups when the signal carries none.
CurrentIdentity = Callable[[Grant], Awaitable[Identity]]


class SignalEffects:
    def __init__(
        self,
        store: Store,
        policy: Callable[[], Policy],
        current_identity: CurrentIdentity | None = None,
        *,
        keep: int = RECENT_SIGNALS,
        token_lifetime: float = 3600.0,
    ) -> None:
        self.store = store
        self.policy = policy
        self.current_identity = current_identity
        self.keep = keep
        # How long an access token already issued may still be presented (its lifetime plus the
        # verifiers' leeway): a narrowing's ended handle stays in the revoked set that long.
        self.token_lifetime = token_lifetime

    # -- effects -------------------------------------------------------------------------------
    async def revoke_user(
        self,
        provider_id: str,
        *,
        subject: str | None = None,
        username: str | None = None,
        reason: str,
        signal: Signal,
    ) -> Outcome:
        """Revoke every grant of the user named by ``subject`` or, failing that, ``username``
        (grants are indexed by both at creation: ``Store.username_grant_ids``)."""
        self._received(signal, subject=subject, username=username)
        if subject is not None:
            subject = self.qualify(provider_id, subject)
            grant_ids = await self.store.user_grant_ids(subject)
        elif username is not None:
            grant_ids = await self.store.username_grant_ids(provider_id, username)
        else:
            raise ValueError("revoke_user needs a subject or a username")
        revoked, subjects = await self._revoke(grant_ids, provider_id, reason)
        if subject is not None:
            subjects.add(subject)
        for each in sorted(subjects):
            await self.store.forget_recheck(provider_id, each)
        outcome = Outcome("revoke_user", subject or _one(subjects), tuple(revoked))
        return await self._applied(signal, outcome, reason)

    async def revoke_session(self, provider_id: str, session: str, *, reason: str, signal: Signal) -> Outcome:
        """Revoke the grants started from one upstream session (``Store.session_grant_ids``)."""
        self._received(signal, session=session)
        revoked, subjects = await self._revoke(
            await self.store.session_grant_ids(provider_id, session), provider_id, reason
        )
        for each in sorted(subjects):
            await self.store.forget_recheck(provider_id, each)
        return await self._applied(signal, Outcome("revoke_session", _one(subjects), tuple(revoked)), reason)

    async def reapply_policy(
        self,
        provider_id: str,
        subject: str,
        *,
        groups: frozenset[str] | None = None,
        group_names: Mapping[str, str] | None = None,
        reason: str = "policy_reapplied",
        signal: Signal,
    ) -> Outcome:
        """Evaluate the policy again for each live grant of the user, with ``groups`` when the
        signal carries them (else the provider's answer now, or the groups kept at sign-in when
        no lookup is wired). A grant the policy still gives every scope stays; one that loses some
        is narrowed, one left with none revoked (see the module docstring)."""
        self._received(signal, subject=subject)
        subject = self.qualify(provider_id, subject)
        await self.store.forget_recheck(provider_id, subject)
        policy = self.policy()
        revoked: list[str] = []
        narrowed: list[str] = []
        unchanged: list[str] = []
        for grant_id in await self.store.user_grant_ids(subject):
            grant = await self.store.get_grant(grant_id)
            if grant is None or not grant.active or grant.identity is None:
                continue
            identity = await self._identity(grant, groups, group_names)
            resource = policy.resource_for(grant.resource)
            kept = (
                policy.evaluate(resource, identity).scopes
                if resource is not None and identity is not None
                else frozenset()
            )
            if set(grant.scope_list) <= kept:
                unchanged.append(grant_id)
                continue
            effect = await self._narrow(grant, kept, reason)
            if effect == "narrowed":
                narrowed.append(grant_id)
            elif effect == "revoked":
                revoked.append(grant_id)
        self._observe(signal, revoked + narrowed)
        outcome = Outcome("reapply_policy", subject, tuple(revoked), tuple(unchanged), narrowed=tuple(narrowed))
        return await self._applied(signal, outcome, reason)

    async def record_only(
        self, provider_id: str, *, subject: str | None = None, note: str | None = None, signal: Signal
    ) -> Outcome:
        """Change nothing; keep and audit the signal."""
        self._received(signal, subject=subject)
        qualified = self.qualify(provider_id, subject) if subject is not None else None
        return await self._applied(signal, Outcome("record_only", qualified, note=note), None)

    async def once(
        self,
        signal: Signal,
        issuer: str,
        jti: str,
        expires_at: float,
        effect: Callable[[], Awaitable[Outcome]],
        *,
        what: str,
        final: tuple[type[Exception], ...] = (),
    ) -> Outcome | None:
        """Run ``effect`` for a signal whose ``jti`` (per ``issuer``) is spent here, once across
        replicas (``Store.claim_assertion_jti``, kept until ``expires_at``); None, the refusal
        audited, when it was spent before. When the effect fails (Redis or the provider), the jti is
        released so the sender's retry is handled rather than refused as a replay (every effect is
        safe to run again); an exception in ``final`` (the signal refused for what it says) keeps
        it spent, as a retry would be refused alike."""
        if not await self.store.claim_assertion_jti(issuer, jti, expires_at):
            self.refused(signal, "invalid_request", f"{what} jti replayed")
            return None
        try:
            return await effect()
        except final:
            raise
        except Exception:
            with contextlib.suppress(Exception):
                await self.store.release_assertion_jti(issuer, jti)
            raise

    def refused(self, signal: Signal, error: str, description: str) -> None:
        """A signal refused before it had any effect (bad signature, replay...): audited, counted."""
        SIGNALS.labels(signal.source, "refused").inc()
        audit(
            "signal_refused",
            source=signal.source,
            kind=signal.kind,
            provider=signal.provider_id,
            error=error,
            reason=description,
        )

    async def recent(self, provider_id: str, limit: int = RECENT_SIGNALS) -> list[dict[str, Any]]:
        """The provider's latest signals and what they did, newest first."""
        return await self.store.recent_signals(provider_id, limit)

    # -- helpers -------------------------------------------------------------------------------
    @staticmethod
    def qualify(provider_id: str, subject: str) -> str:
        prefix = qualified_subject(provider_id, "")
        return subject if subject.startswith(prefix) else qualified_subject(provider_id, subject)

    async def _identity(
        self, grant: Grant, groups: frozenset[str] | None, group_names: Mapping[str, str] | None
    ) -> Identity | None:
        stored = grant.identity
        assert stored is not None
        if groups is None and self.current_identity is not None:
            try:
                return await self.current_identity(grant)
            except Exception:  # the user is gone upstream, or it cannot answer: fail closed, the
                return None  # signal said something changed (the grant is revoked below)
        return Identity(
            provider_id=stored.provider_id,
            subject=stored.subject,
            username=stored.username,
            email=stored.email,
            display_name=stored.display_name,
            groups=groups if groups is not None else frozenset(stored.groups),
            group_names=dict(group_names if group_names is not None else stored.group_names),
            username_is_unique=stored.username_is_unique,
        )

    async def _narrow(self, grant: Grant, kept: frozenset[str], reason: str) -> Literal["narrowed", "revoked", None]:
        """Narrow ``grant`` to the scopes of it in ``kept``, or revoke it when none is left; reread
        and try again when another narrowing moved it meanwhile. None when it ended meanwhile."""
        for _ in range(NARROW_ATTEMPTS):
            remaining = [s for s in grant.scope_list if s in kept]
            if not remaining:
                return "revoked" if await self.store.revoke_grant(grant.grant_id, reason) else None
            done = await self.store.narrow_grant(
                grant.grant_id,
                " ".join(remaining),
                epoch=grant.epoch,
                tokens_expire_at=time.time() + self.token_lifetime,
                reason=reason,
            )
            if done == "ok":
                audit(
                    "grant_narrowed",
                    grant_id=grant.grant_id,
                    client_id=grant.client_id,
                    sub=grant.subject,
                    scope=" ".join(remaining),
                    scopes_removed=sorted(set(grant.scope_list) - set(remaining)),
                    reason=reason,
                )
                return "narrowed"
            if done == "inactive":
                return None
            reread = await self.store.get_grant(grant.grant_id)
            if reread is None or not reread.active:
                return None
            grant = reread
        # Narrowed by others every time: end it rather than leave it wider than the policy allows.
        return "revoked" if await self.store.revoke_grant(grant.grant_id, reason) else None

    async def _revoke(self, grant_ids: list[str], provider_id: str, reason: str) -> tuple[list[str], set[str]]:
        revoked: list[str] = []
        subjects: set[str] = set()
        for grant_id in grant_ids:
            grant = await self.store.get_grant(grant_id)
            if grant is None or (grant.identity.provider_id if grant.identity else grant.provider_id) != provider_id:
                continue
            subjects.add(grant.subject)
            if await self.store.revoke_grant(grant_id, reason):
                revoked.append(grant_id)
        return revoked, subjects

    def _received(self, signal: Signal, **named: str | None) -> None:
        SIGNALS.labels(signal.source, "received").inc()
        audit(
            "signal_received",
            source=signal.source,
            kind=signal.kind,
            provider=signal.provider_id,
            signal_id=signal.signal_id,
            **{k: v for k, v in named.items() if v is not None},
        )

    def _observe(self, signal: Signal, revoked: list[str]) -> None:
        if revoked:
            SIGNAL_TO_REVOCATION.labels(signal.source).observe(time.perf_counter() - signal.received_clock)

    async def _applied(self, signal: Signal, outcome: Outcome, reason: str | None) -> Outcome:
        if outcome.effect != "reapply_policy":  # reapply_policy observed before its own bookkeeping
            self._observe(signal, list(outcome.revoked))
        SIGNALS.labels(signal.source, "applied").inc()
        audit(
            "signal_applied",
            source=signal.source,
            kind=signal.kind,
            provider=signal.provider_id,
            signal_id=signal.signal_id,
            sub=outcome.subject,
            effect=outcome.effect,
            grants=list(outcome.revoked),
            grants_narrowed=list(outcome.narrowed) or None,
            grants_unchanged=len(outcome.unchanged),
            reason=reason,
        )
        await self.store.record_signal(
            signal.provider_id,
            {
                "source": signal.source,
                "kind": signal.kind,
                "signal_id": signal.signal_id,
                "received_at": signal.received_at,
                "detail": dict(signal.detail),
                "reason": reason,
                **outcome.to_json(),
            },
            keep=self.keep,
        )
        return outcome


def _one(subjects: set[str]) -> str | None:
    return next(iter(subjects)) if len(subjects) == 1 else None
