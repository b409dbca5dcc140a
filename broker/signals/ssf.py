"""OpenID Shared Signals Framework 1.0, the receiver's side: Security Event Tokens (RFC 8417) from
a configured transmitter (``shared_signals.streams``), delivered by push (RFC 8935,
``POST /ssf/push/{stream}``) or poll (RFC 8936, :class:`Poller`).

A SET is accepted when (in this order): it is a compact JWS whose ``alg`` is one of the stream's
asymmetric algorithms (``none`` and HMAC never pass) signed by a key of the transmitter's JWKS
(the shared cache of ``mcp_broker_verifier.jwks``; ``jwks_uri`` configured or read from
``/.well-known/ssf-configuration``); its header ``typ`` is ``secevent+jwt``; ``iss`` is the
stream's issuer; ``aud`` contains the stream's audience; ``iat`` is not in the future (60 s skew)
nor older than a day; ``exp``, if any, has not passed; ``jti`` is present; ``events`` holds
exactly one event, a JSON object. Its ``jti`` is then spent once across replicas
(``Store.claim_assertion_jti``). A refused SET changes nothing.

The subject (``sub_id``, SSF 1.0 §3, or the event's ``subject`` of older transmitters) names the
provider's user: ``email`` and ``account`` (``acct:``) by the username the provider gave at sign-in
(Okta's login, Entra's UPN), compared case-insensitively; ``iss_sub`` and ``opaque`` by the
provider's subject; ``complex`` by its ``user`` member (and its ``session`` member for
``session-revoked``). What each event does is :data:`EFFECTS` (docs/deprovisioning.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import structlog

from broker.config.shared_signals import SharedSignalsConfig, SsfStreamConfig
from broker.signals.effects import Outcome, Signal, SignalEffects
from broker.store.base import Store
from mcp_broker_verifier.jwks import fetch_key_set
from providers.base import UpstreamRejected, UpstreamUnavailable
from providers.oidc.id_token import IdTokenVerifier, KeySet, unverified_header

_log = structlog.get_logger("broker.signals.ssf")

CAEP = "https://schemas.openid.net/secevent/caep/event-type/"
RISC = "https://schemas.openid.net/secevent/risc/event-type/"
SSF = "https://schemas.openid.net/secevent/ssf/event-type/"

# What each event does: revoke the user's grants, re-apply the policy, or record only.
Action = Literal["revoke", "reapply", "record", "revoke_if_decrease"]
EFFECTS: Mapping[str, Action] = {
    CAEP + "session-revoked": "revoke",  # the session's grants when sub_id names one, else the user's
    CAEP + "credential-change": "revoke",
    CAEP + "token-claims-change": "reapply",  # with the event's claims.groups, else the provider's answer
    CAEP + "assurance-level-change": "revoke_if_decrease",  # change_direction: decrease revokes
    RISC + "account-disabled": "revoke",
    RISC + "account-purged": "revoke",
    RISC + "account-credential-change-required": "revoke",
    RISC + "identifier-changed": "record",
}

LEEWAY = 60  # seconds of clock skew
MAX_AGE = 86_400  # a SET issued longer ago is refused (a poll stream may hold events a while)
_TYP = {"secevent+jwt", "application/secevent+jwt"}

ErrorCode = Literal[
    "invalid_request", "invalid_key", "invalid_issuer", "invalid_audience", "authentication_failed", "access_denied"
]


@dataclass(frozen=True)
class SetRefused(Exception):
    """RFC 8935 §2.3 / RFC 8936 §2.4.4: ``err`` and a ``description`` safe to show the transmitter."""

    err: ErrorCode
    description: str
    duplicate: bool = False  # the SET's jti was spent before: it was handled already


@dataclass(frozen=True)
class SecurityEvent:
    """A verified SET: its one event, its subject, when its ``jti`` record may end."""

    jti: str
    event_type: str
    event: Mapping[str, Any]
    sub_id: Mapping[str, Any] | None
    expires_at: float


@dataclass(frozen=True)
class Subject:
    """Whom a ``sub_id`` names: the provider's ``subject`` or ``username``, maybe a ``session``."""

    subject: str | None = None
    username: str | None = None
    session: str | None = None


def subject_of(sub_id: object) -> Subject | None:
    """SSF 1.0 §3 subject identifiers (RFC 9493 formats) mapped to a provider's user."""
    if not isinstance(sub_id, Mapping):
        return None
    form = sub_id.get("format")

    def text(key: str) -> str | None:
        value = sub_id.get(key)
        return value if isinstance(value, str) and value and len(value) <= 512 else None

    if form == "email":
        email = text("email")
        return Subject(username=email) if email else None
    if form == "account":
        uri = text("uri")
        return Subject(username=uri.removeprefix("acct:")) if uri and uri.startswith("acct:") else None
    if form == "iss_sub":
        sub = text("sub")
        return Subject(subject=sub) if sub else None
    if form == "opaque":
        opaque = text("id")
        return Subject(subject=opaque) if opaque else None
    if form == "complex":
        user = subject_of(sub_id.get("user"))
        session = sub_id.get("session")
        sid = None
        if isinstance(session, Mapping):
            found = session.get("id") or session.get("sub")
            sid = found if isinstance(found, str) and found and len(found) <= 512 else None
        if user is None and sid is None:
            return None
        return Subject(subject=user.subject if user else None, username=user.username if user else None, session=sid)
    return None


def _discovery_url(issuer: str) -> str:
    # SSF 1.0 §7.2: the well-known segment goes between the host and the issuer's path.
    parts = urlsplit(issuer.rstrip("/"))
    return f"{parts.scheme}://{parts.netloc}/.well-known/ssf-configuration{parts.path}"


class Stream:
    """One configured stream: its SET verification (the transmitter's keys, cached)."""

    def __init__(
        self,
        config: SsfStreamConfig,
        audience: str,
        http: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.id = config.id
        self.provider_id = config.provider
        self.audience = config.audience or audience
        self._http = http
        self._clock = clock
        self._jwks_uri = config.jwks_uri
        self.keys = KeySet(self._fetch_jwks, timeout=10.0)
        self._push_digest = config.push.token_digest() if config.push is not None else None

    def authorized(self, authorization: str | None) -> bool:
        """The push request's ``Authorization: Bearer`` is the stream's token (constant time)."""
        if self._push_digest is None or not authorization:
            return False
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        return hmac.compare_digest(hashlib.sha256(token.strip().encode()).digest(), self._push_digest)

    async def _fetch_jwks(self) -> object:
        try:
            if self._jwks_uri is None:
                response = await self._http.get(
                    _discovery_url(self.config.issuer), headers={"Accept": "application/json"}
                )
                response.raise_for_status()
                document = response.json()
                uri = document.get("jwks_uri") if isinstance(document, dict) else None
                if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
                    raise UpstreamRejected("the transmitter's ssf-configuration has no jwks_uri")
                self._jwks_uri = uri
            return await fetch_key_set(self._http, self._jwks_uri)
        except (httpx.HTTPError, ValueError) as exc:
            raise UpstreamUnavailable(f"the transmitter's keys: {type(exc).__name__}") from None

    async def verify(self, raw: str) -> SecurityEvent:
        """The SET's one event, verified (see the module docstring); SetRefused otherwise."""
        try:
            header = unverified_header(raw)
        except UpstreamRejected:
            raise SetRefused("invalid_request", "the SET is not a compact JWS") from None
        alg = header["alg"]
        if alg not in self.config.algorithms:
            raise SetRefused("invalid_key", f"SETs are signed with {', '.join(self.config.algorithms)}")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in _TYP:
            raise SetRefused("invalid_request", "the SET's typ is not secevent+jwt")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise SetRefused("invalid_request", "the SET header has a non-string kid")
        try:
            keys = await self.keys.candidates(kid, alg)
        except (UpstreamUnavailable, UpstreamRejected):
            raise SetRefused("invalid_key", "the transmitter's keys could not be fetched") from None
        if not keys:
            raise SetRefused("invalid_key", "no key of the transmitter's JWKS matches the SET")
        try:
            claims = IdTokenVerifier._signed_claims(raw, keys, alg)
        except UpstreamRejected as exc:
            signature = "signature" in str(exc)
            raise SetRefused(
                "invalid_key" if signature else "invalid_request",
                "the SET signature does not verify" if signature else "the SET is malformed",
            ) from None
        return self._check(claims)

    def _check(self, claims: Mapping[str, Any]) -> SecurityEvent:
        now = self._clock()
        if claims.get("iss") != self.config.issuer:
            raise SetRefused("invalid_issuer", "iss is not this stream's transmitter")
        aud = claims.get("aud")
        if self.audience not in (aud if isinstance(aud, list) else [aud]):
            raise SetRefused("invalid_audience", "aud does not name this receiver")
        iat = claims.get("iat")
        if not isinstance(iat, int | float) or isinstance(iat, bool):
            raise SetRefused("invalid_request", "the SET has no iat")
        if iat > now + LEEWAY or iat < now - MAX_AGE:
            raise SetRefused("invalid_request", "the SET's iat is outside the accepted window")
        exp = claims.get("exp")
        if exp is not None and (not isinstance(exp, int | float) or isinstance(exp, bool) or exp < now - LEEWAY):
            raise SetRefused("invalid_request", "the SET has expired")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise SetRefused("invalid_request", "the SET has no jti")
        events = claims.get("events")
        if not isinstance(events, dict) or len(events) != 1:
            raise SetRefused("invalid_request", "the SET's events claim must hold exactly one event")
        [(event_type, event)] = events.items()
        if not isinstance(event, dict):
            raise SetRefused("invalid_request", "the SET's event is not a JSON object")
        sub_id = claims.get("sub_id", event.get("subject"))
        if sub_id is not None and not isinstance(sub_id, dict):
            raise SetRefused("invalid_request", "sub_id is not a subject identifier")
        until = max(float(exp) if exp is not None else 0.0, float(iat) + MAX_AGE) + LEEWAY
        return SecurityEvent(jti=jti, event_type=event_type, event=event, sub_id=sub_id, expires_at=until)


class SsfReceiver:
    """The configured streams; what push and poll deliveries hand their SETs to."""

    def __init__(
        self,
        config: SharedSignalsConfig,
        audience: str,
        store: Store,
        effects: SignalEffects,
        *,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._own_http = http is None
        self.http = http or httpx.AsyncClient(timeout=httpx.Timeout(10.0), follow_redirects=False)
        self.streams = {s.id: Stream(s, audience, self.http, clock=clock) for s in config.streams}
        self.store = store
        self.effects = effects
        self.pollers = [Poller(self, stream) for stream in self.streams.values() if stream.config.poll is not None]

    async def start(self) -> None:
        for poller in self.pollers:
            poller.start()

    async def aclose(self) -> None:
        for poller in self.pollers:
            await poller.stop()
        if self._own_http:
            await self.http.aclose()

    async def push(self, stream_id: str, raw: bytes, *, content_type: str | None, authorization: str | None) -> Outcome:
        """RFC 8935 §2: one pushed SET. SetRefused is the 400 answer's ``err``."""
        arrived = Signal(source="ssf", kind="set", provider_id="-", detail={"stream": stream_id[:64]})
        stream = self.streams.get(stream_id)
        if stream is None or not stream.authorized(authorization):
            self.effects.refused(arrived, "authentication_failed", "unknown stream or wrong authorization")
            raise SetRefused("authentication_failed", "the authorization is not valid for this stream")
        arrived = Signal(source="ssf", kind="set", provider_id=stream.provider_id, detail={"stream": stream.id})
        if stream.config.delivery != "push":
            self.effects.refused(arrived, "access_denied", "push to a poll stream")
            raise SetRefused("access_denied", "this stream is delivered by poll")
        media = (content_type or "").split(";")[0].strip().lower()
        if media != "application/secevent+jwt":
            self.effects.refused(arrived, "invalid_request", "wrong content type")
            raise SetRefused("invalid_request", "the content type must be application/secevent+jwt")
        try:
            text = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            text = ""
        return await self.receive(stream, text, arrived)

    async def receive(self, stream: Stream, raw: str, arrived: Signal) -> Outcome:
        """Verify one SET, spend its jti, apply its event. SetRefused: nothing changed."""
        if not raw or len(raw) > 64 * 1024:
            self.effects.refused(arrived, "invalid_request", "empty or oversized SET")
            raise SetRefused("invalid_request", "the body is not a SET")
        try:
            event = await stream.verify(raw)
        except SetRefused as exc:
            self.effects.refused(arrived, exc.err, exc.description)
            raise
        signal = Signal(
            source="ssf",
            kind=event.event_type[:200],
            provider_id=stream.provider_id,
            signal_id=event.jti,
            received_at=arrived.received_at,
            received_clock=arrived.received_clock,
            detail={"stream": stream.id, **({"sub_id": dict(event.sub_id)} if event.sub_id else {})},
        )
        outcome = await self.effects.once(
            signal,
            "ssf\n" + stream.config.issuer,
            event.jti,
            event.expires_at,
            lambda: self.apply(stream, event, signal),
            what="SET",
            final=(SetRefused,),
        )
        if outcome is None:  # a poller then acknowledges it: it was handled before
            raise SetRefused("invalid_request", "the SET was already received (jti)", duplicate=True)
        return outcome

    async def apply(self, stream: Stream, event: SecurityEvent, signal: Signal) -> Outcome:
        provider = stream.provider_id
        action = EFFECTS.get(event.event_type)
        who = subject_of(event.sub_id)
        if action is None or action == "record":
            note = None if action else "event type not handled: recorded only"
            return await self.effects.record_only(
                provider, subject=who.subject if who else None, note=note, signal=signal
            )
        if who is None:
            self.effects.refused(signal, "invalid_request", "no usable subject")
            raise SetRefused("invalid_request", "the SET's subject (sub_id) names no user in a supported format")
        reason = "ssf_" + event.event_type.rsplit("/", 1)[-1].replace("-", "_")
        if action == "revoke_if_decrease":
            if event.event.get("change_direction") != "decrease":
                return await self.effects.record_only(
                    provider, subject=who.subject, note="assurance level not decreased", signal=signal
                )
            action = "revoke"
        if action == "revoke":
            if who.session is not None and event.event_type == CAEP + "session-revoked":
                return await self.effects.revoke_session(provider, who.session, reason=reason, signal=signal)
            if who.subject is not None:
                return await self.effects.revoke_user(provider, subject=who.subject, reason=reason, signal=signal)
            assert who.username is not None
            return await self.effects.revoke_user(provider, username=who.username, reason=reason, signal=signal)
        # reapply: the policy again with the event's groups (claims.groups), else the provider's answer
        subject = who.subject or await self._subject_by_username(provider, who.username)
        if subject is None:
            return await self.effects.record_only(provider, note="no live grant of that user", signal=signal)
        claims = event.event.get("claims")
        groups = claims.get("groups") if isinstance(claims, dict) else None
        named = frozenset(g for g in groups if isinstance(g, str)) if isinstance(groups, list) else None
        # The event names groups by name: they replace both the kept ids and their names.
        names = {g: g for g in named} if named is not None else None
        return await self.effects.reapply_policy(
            provider, subject, groups=named, group_names=names, reason=reason, signal=signal
        )

    async def _subject_by_username(self, provider_id: str, username: str | None) -> str | None:
        if username is None:
            return None
        for grant_id in await self.store.username_grant_ids(provider_id, username):
            grant = await self.store.get_grant(grant_id)
            if grant is not None:
                return grant.subject
        return None


@dataclass
class Poller:
    """RFC 8936 poll delivery for one stream: POST ``{"ack": [...], "setErrs": {...}, "maxEvents":
    N, "returnImmediately": true}`` with the stream's bearer token; the SETs answered are handled
    and acknowledged (refused ones reported in ``setErrs``) with the next request. Polls again at
    once while SETs come, waits ``interval`` when none did, backs off (1 s doubling to 60 s) on
    errors. Each request is bounded by ``poll.timeout``."""

    receiver: SsfReceiver
    stream: Stream
    acks: list[str] = field(default_factory=list)
    errors: dict[str, dict[str, str]] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"ssf-poll-{self.stream.id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.acks or self.errors:  # acknowledge what was handled (maxEvents 0: nothing new)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.poll_once(max_events=0), 2.0)

    async def _run(self) -> None:
        poll = self.stream.config.poll
        assert poll is not None
        backoff = 1.0
        while True:
            try:
                got = await self.poll_once()
                backoff = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _log.warning("ssf_poll_failed", stream=self.stream.id, error=f"{type(exc).__name__}: {str(exc)[:200]}")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 60.0)
                continue
            if not got:
                await asyncio.sleep(poll.interval)

    async def poll_once(self, *, max_events: int | None = None) -> int:
        """One poll request; the number of SETs it brought (handled before returning)."""
        poll = self.stream.config.poll
        assert poll is not None
        body: dict[str, Any] = {
            "maxEvents": poll.max_events if max_events is None else max_events,
            "returnImmediately": True,
        }
        acks, errors = list(self.acks), dict(self.errors)
        if acks:
            body["ack"] = acks
        if errors:
            body["setErrs"] = errors
        response = await self.receiver.http.post(
            poll.endpoint,
            content=json.dumps(body),
            headers={
                "Authorization": f"Bearer {poll.authorization.get_secret_value()}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
            timeout=poll.timeout,
        )
        if response.status_code != 200:
            raise UpstreamUnavailable(f"poll endpoint answered HTTP {response.status_code}")
        # The transmitter has them now.
        self.acks = self.acks[len(acks) :]
        for jti in errors:
            self.errors.pop(jti, None)
        document = response.json()
        sets = document.get("sets") if isinstance(document, dict) else None
        if not isinstance(sets, dict):
            return 0
        for jti, raw in list(sets.items())[:1000]:
            if not isinstance(jti, str):
                continue
            arrived = Signal(
                source="ssf", kind="set", provider_id=self.stream.provider_id, detail={"stream": self.stream.id}
            )
            try:
                if not isinstance(raw, str):
                    self.receiver.effects.refused(arrived, "invalid_request", "a poll answer's SET is not a string")
                    raise SetRefused("invalid_request", "the SET is not a string")
                await self.receiver.receive(self.stream, raw, arrived)
                self.acks.append(jti)
            except SetRefused as exc:
                if exc.duplicate:
                    self.acks.append(jti)  # handled before: its ack was lost
                else:
                    self.errors[jti] = {"err": exc.err, "description": exc.description}
        return len(sets)
