"""Shared Signals (OpenID SSF 1.0) receiver end to end: a transmitter emulator
(tests/emulators/ssf.py) signs SETs naming a user signed in through the broker (real Redis and
slapd); each event kind has its effect, seen where it matters: the verifier mcp_app runs
(RevocationWatcher) refuses the user's access token, another user's stays valid. Push (RFC 8935)
and poll (RFC 8936, with acknowledgements and setErrs). Bad SETs get RFC 8935's error and change
nothing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from jose import jwt
from pydantic import ValidationError

from broker.config import parse_config
from broker.config.loader import ConfigError
from broker.config.shared_signals import SharedSignalsConfig
from broker.devstack import RedisServer, Slapd
from broker.signals.ssf import Subject, subject_of
from tests.broker.conftest import BrokerFactory
from tests.broker.flows import Broker, broker_yaml, refresh, tokens_for
from tests.broker.revocations import refused_within, verifier_for
from tests.emulators.ssf import CAEP, POLL_TOKEN, RISC, SsfTransmitter, new_key

ADMIN_TOKEN = "admin-" + "s" * 40
PUSH_TOKEN = "push-" + "q" * 40
PROVIDER = "demo-ldap"
BOUND = 3.0  # seconds; the refusal takes milliseconds, the bound is for a loaded machine


def streams_yaml(transmitter: SsfTransmitter, *, poll_interval: float = 0.05) -> str:
    return f"""
admin:
  token: "{ADMIN_TOKEN}"
shared_signals:
  streams:
    - id: okta
      provider: {PROVIDER}
      issuer: {transmitter.issuer}
      jwks_uri: {transmitter.issuer}/jwks
      delivery: push
      push:
        authorization: "{PUSH_TOKEN}"
    - id: kc
      provider: {PROVIDER}
      issuer: {transmitter.issuer}
      delivery: poll
      poll:
        endpoint: {transmitter.issuer}/poll
        authorization: "{POLL_TOKEN}"
        interval: {poll_interval}
"""


@dataclass
class Setup:
    broker: Broker
    transmitter: SsfTransmitter

    @property
    def push_url(self) -> str:
        return f"{self.broker.base}/ssf/push/okta"

    def push(self, token: str, authorization: str | None = PUSH_TOKEN, **kw: Any) -> httpx.Response:
        return self.transmitter.push(self.push_url, token, authorization, **kw)


@contextmanager
def ssf_broker(broker_factory: BrokerFactory, transmitter: SsfTransmitter | None = None) -> Iterator[Setup]:
    transmitter = transmitter or SsfTransmitter(audience="")
    with transmitter.serve(), broker_factory(extra=streams_yaml(transmitter)) as broker:
        transmitter.audience = broker.base
        yield Setup(broker, transmitter)


def local_subject(access_token: str) -> str:
    sub: str = jwt.get_unverified_claims(access_token)["sub"]
    assert sub.startswith(PROVIDER + ":")
    return sub.removeprefix(PROVIDER + ":")


def signals(broker: Broker) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{broker.base}/admin/signals",
        params={"provider": PROVIDER},
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert response.status_code == 200, response.text
    records: list[dict[str, Any]] = response.json()
    return records


REVOKING = [
    (CAEP + "session-revoked", {}),
    (CAEP + "credential-change", {"credential_type": "password", "change_type": "update"}),
    (
        CAEP + "assurance-level-change",
        {"namespace": "NIST-AAL", "current_level": "nist-aal1", "change_direction": "decrease"},
    ),
    (RISC + "account-disabled", {"reason": "hijacking"}),
    (RISC + "account-purged", {}),
    (RISC + "account-credential-change-required", {}),
]


@pytest.mark.parametrize(("event_type", "event"), REVOKING, ids=[e.rsplit("/", 1)[-1] for e, _ in REVOKING])
async def test_each_revoking_event_ends_the_users_access_at_once(
    broker_factory: BrokerFactory, redis_server: RedisServer, event_type: str, event: dict[str, Any]
) -> None:
    with ssf_broker(broker_factory) as setup:
        _, alice = tokens_for(setup.broker, "alice")
        _, bob = tokens_for(setup.broker, "bob")
        sub_id = {"format": "iss_sub", "iss": setup.transmitter.issuer, "sub": local_subject(alice["access_token"])}
        async with verifier_for(setup.broker, redis_server) as verifier:
            assert await verifier.verify_token(alice["access_token"]) is not None
            answer = setup.push(setup.transmitter.sign(event_type, event, sub_id=sub_id))
            assert answer.status_code == 202, answer.text
            took = await refused_within(verifier, alice["access_token"], BOUND)
            assert await verifier.verify_token(bob["access_token"]) is not None
        print(f"{event_type.rsplit('/', 1)[-1]}: refused {took * 1000:.1f} ms after the push returned")
        [record] = signals(setup.broker)
        assert record["source"] == "ssf"
        assert record["kind"] == event_type
        assert record["effect"] == "revoke_user"
        assert record["revoked"] == [jwt.get_unverified_claims(alice["access_token"])["sid"]]


@pytest.mark.parametrize(
    "sub_id",
    [
        {"format": "opaque", "id": "<sub>"},
        {"format": "complex", "user": {"format": "iss_sub", "iss": "x", "sub": "<sub>"}},
        {"format": "email", "email": "ALICE"},  # matched with the username the provider gave
        {"format": "account", "uri": "acct:alice"},
    ],
    ids=["opaque", "complex", "email", "account"],
)
async def test_subject_formats(
    broker_factory: BrokerFactory, redis_server: RedisServer, sub_id: dict[str, Any]
) -> None:
    with ssf_broker(broker_factory) as setup:
        _, alice = tokens_for(setup.broker, "alice")
        sub = local_subject(alice["access_token"])
        named = json.loads(json.dumps(sub_id).replace("<sub>", sub))
        async with verifier_for(setup.broker, redis_server) as verifier:
            answer = setup.push(setup.transmitter.sign(RISC + "account-disabled", sub_id=named))
            assert answer.status_code == 202, answer.text
            await refused_within(verifier, alice["access_token"], BOUND)


async def test_token_claims_change_reapplies_the_policy_with_the_new_groups(
    broker_factory: BrokerFactory, redis_server: RedisServer
) -> None:
    with ssf_broker(broker_factory) as setup:
        client, alice = tokens_for(setup.broker, "alice")
        sub_id = {"format": "opaque", "id": local_subject(alice["access_token"])}
        async with verifier_for(setup.broker, redis_server) as verifier:
            # the same groups: the grant keeps every scope and stays
            same = {"claims": {"groups": ["mcp-readers", "mcp-writers"]}}
            answer = setup.push(setup.transmitter.sign(CAEP + "token-claims-change", same, sub_id=sub_id))
            assert answer.status_code == 202, answer.text
            assert await verifier.verify_token(alice["access_token"]) is not None
            # mcp-writers gone: the grant loses notes:write and is narrowed; its token ends now
            readers = {"claims": {"groups": ["mcp-readers"]}}
            answer = setup.push(setup.transmitter.sign(CAEP + "token-claims-change", readers, sub_id=sub_id))
            assert answer.status_code == 202, answer.text
            await refused_within(verifier, alice["access_token"], BOUND)
            again = await asyncio.to_thread(refresh, setup.broker, client["client_id"], alice["refresh_token"])
            assert again.status_code == 200, again.text
            assert again.json()["scope"] == "notes:read"
            narrowed = again.json()["access_token"]
            assert await verifier.verify_token(narrowed) is not None
            # no groups left: nothing to narrow to, so the grant is revoked
            answer = setup.push(
                setup.transmitter.sign(CAEP + "token-claims-change", {"claims": {"groups": []}}, sub_id=sub_id)
            )
            assert answer.status_code == 202, answer.text
            await refused_within(verifier, narrowed, BOUND)
        record, shrunk, kept = signals(setup.broker)
        assert record["effect"] == shrunk["effect"] == kept["effect"] == "reapply_policy"
        assert len(record["revoked"]) == 1
        assert shrunk["revoked"] == []
        assert shrunk["narrowed"] == record["revoked"]
        assert kept["revoked"] == kept["narrowed"] == []
        assert len(kept["unchanged"]) == 1


@pytest.mark.parametrize(
    ("event_type", "event"),
    [
        (RISC + "identifier-changed", {"new-value": "alice2@example.com"}),
        (
            CAEP + "assurance-level-change",
            {"namespace": "NIST-AAL", "current_level": "nist-aal3", "change_direction": "increase"},
        ),
        ("https://schemas.example.com/event-type/something-new", {}),
        ("https://schemas.openid.net/secevent/ssf/event-type/verification", {"state": "abc"}),
    ],
    ids=["identifier-changed", "assurance-increase", "unknown", "verification"],
)
async def test_record_only_events_change_nothing(
    broker_factory: BrokerFactory, redis_server: RedisServer, event_type: str, event: dict[str, Any]
) -> None:
    with ssf_broker(broker_factory) as setup:
        _, alice = tokens_for(setup.broker, "alice")
        sub_id = {"format": "opaque", "id": local_subject(alice["access_token"])}
        async with verifier_for(setup.broker, redis_server) as verifier:
            answer = setup.push(setup.transmitter.sign(event_type, event, sub_id=sub_id))
            assert answer.status_code == 202, answer.text
            await asyncio.sleep(0.2)
            assert await verifier.verify_token(alice["access_token"]) is not None
        [record] = signals(setup.broker)
        assert record["effect"] == "record_only"
        assert record["revoked"] == []


async def test_bad_sets_get_the_rfc_8935_error_and_change_nothing(
    broker_factory: BrokerFactory, redis_server: RedisServer
) -> None:
    with ssf_broker(broker_factory) as setup:
        t = setup.transmitter
        _, alice = tokens_for(setup.broker, "alice")
        sub_id = {"format": "opaque", "id": local_subject(alice["access_token"])}
        event = RISC + "account-disabled"
        other = new_key("ES256")
        other_rsa = new_key("RS256")
        good = t.sign(event, sub_id=sub_id)
        head, _, signature = good.split(".")
        cases: list[tuple[str, httpx.Response, str]] = [
            (
                "unsigned",
                setup.push(
                    t.unsigned(
                        {
                            "iss": t.issuer,
                            "aud": t.audience,
                            "iat": int(time.time()),
                            "jti": "u1",
                            "events": {event: {}},
                            "sub_id": sub_id,
                        }
                    )
                ),
                "invalid_key",
            ),
            ("wrong key, same kid", setup.push(t.sign(event, sub_id=sub_id, key=other)), "invalid_key"),
            ("unknown kid", setup.push(t.sign(event, sub_id=sub_id, key=other, header={"kid": "nope"})), "invalid_key"),
            (
                "HS256",
                setup.push(t.sign(event, sub_id=sub_id, header={"alg": "HS256"}, key=_hmac_key())),
                "invalid_key",
            ),
            (
                "RS256 by an unknown key",
                setup.push(t.sign(event, sub_id=sub_id, header={"alg": "RS256", "kid": None}, key=other_rsa)),
                "invalid_key",
            ),
            (
                "tampered payload",
                setup.push(f"{head}.{t.sign(RISC + 'account-purged', sub_id=sub_id).split('.')[1]}.{signature}"),
                "invalid_key",
            ),
            (
                "expired (iat two days ago)",
                setup.push(t.sign(event, sub_id=sub_id, iat=int(time.time()) - 2 * 86400)),
                "invalid_request",
            ),
            ("exp passed", setup.push(t.sign(event, sub_id=sub_id, exp=int(time.time()) - 600)), "invalid_request"),
            (
                "iat in the future",
                setup.push(t.sign(event, sub_id=sub_id, iat=int(time.time()) + 3600)),
                "invalid_request",
            ),
            (
                "wrong audience",
                setup.push(t.sign(event, sub_id=sub_id, aud="https://elsewhere.example.com")),
                "invalid_audience",
            ),
            (
                "wrong issuer",
                setup.push(t.sign(event, sub_id=sub_id, iss="https://evil.example.com")),
                "invalid_issuer",
            ),
            ("wrong typ", setup.push(t.sign(event, sub_id=sub_id, header={"typ": "JWT"})), "invalid_request"),
            ("no typ", setup.push(t.sign(event, sub_id=sub_id, header={"typ": None})), "invalid_request"),
            ("no jti", setup.push(t.sign(event, sub_id=sub_id, jti=None)), "invalid_request"),
            (
                "two events",
                setup.push(t.sign(event, sub_id=sub_id, events={event: {}, RISC + "account-purged": {}})),
                "invalid_request",
            ),
            ("event not an object", setup.push(t.sign(event, sub_id=sub_id, events={event: "x"})), "invalid_request"),
            (
                "unknown subject format",
                setup.push(t.sign(event, sub_id={"format": "phone_number", "phone_number": "+1"})),
                "invalid_request",
            ),
            ("no subject", setup.push(t.sign(event)), "invalid_request"),
            ("malformed", setup.push("not.a.jwt"), "invalid_request"),
            ("garbage", setup.push("x" * 100), "invalid_request"),
            ("empty", setup.push(""), "invalid_request"),
            ("wrong content type", setup.push(good, content_type="application/json"), "invalid_request"),
            ("no authorization", setup.push(good, authorization=None), "authentication_failed"),
            ("wrong authorization", setup.push(good, authorization="push-" + "x" * 40), "authentication_failed"),
            (
                "unknown stream",
                post_set(
                    f"{setup.broker.base}/ssf/push/nope",
                    content=good,
                    headers={"content-type": "application/secevent+jwt", "authorization": f"Bearer {PUSH_TOKEN}"},
                ),
                "authentication_failed",
            ),
        ]
        async with verifier_for(setup.broker, redis_server) as verifier:
            for name, answer, err in cases:
                assert answer.status_code == 400, (name, answer.text)
                assert answer.json()["err"] == err, (name, answer.text)
                assert answer.json()["description"], name
            assert await verifier.verify_token(alice["access_token"]) is not None
            assert signals(setup.broker) == []
            # the good one passes once; its replay is refused
            assert setup.push(good).status_code == 202
            replayed = setup.push(good)
            assert replayed.status_code == 400
            assert replayed.json() == {"err": "invalid_request", "description": "the SET was already received (jti)"}
            await refused_within(verifier, alice["access_token"], BOUND)
        assert len(signals(setup.broker)) == 1


def post_set(url: str, content: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(url, content=content, headers=headers)


def _hmac_key() -> Any:
    from joserfc import jwk

    return jwk.OctKey.import_key("k" * 32, {"kid": "h"})


async def test_poll_delivery_handles_and_acknowledges(broker_factory: BrokerFactory, redis_server: RedisServer) -> None:
    transmitter = SsfTransmitter(audience="")
    with ssf_broker(broker_factory, transmitter) as setup:
        _, alice = tokens_for(setup.broker, "alice")
        _, bob = tokens_for(setup.broker, "bob")
        alice_id = {"format": "opaque", "id": local_subject(alice["access_token"])}
        bob_id = {"format": "opaque", "id": local_subject(bob["access_token"])}
        async with verifier_for(setup.broker, redis_server) as verifier:
            good = transmitter.enqueue(transmitter.sign(CAEP + "session-revoked", sub_id=alice_id))
            bad = transmitter.enqueue(
                transmitter.sign(RISC + "account-disabled", sub_id=bob_id, aud="https://elsewhere.example.com")
            )
            note = transmitter.enqueue(transmitter.sign(RISC + "identifier-changed", sub_id=bob_id))
            await refused_within(verifier, alice["access_token"], BOUND)
            deadline = time.monotonic() + BOUND
            while not (good in transmitter.acked and note in transmitter.acked and bad in transmitter.set_errs):
                assert time.monotonic() < deadline, (transmitter.acked, transmitter.set_errs)
                await asyncio.sleep(0.02)
            assert transmitter.set_errs[bad]["err"] == "invalid_audience"
            assert await verifier.verify_token(bob["access_token"]) is not None
            assert not transmitter.queue
            # a push to the poll stream is not accepted
            refused = post_set(
                f"{setup.broker.base}/ssf/push/kc",
                content=transmitter.sign(RISC + "account-disabled", sub_id=bob_id),
                headers={"content-type": "application/secevent+jwt", "authorization": f"Bearer {POLL_TOKEN}"},
            )
            assert refused.status_code == 400
            assert refused.json()["err"] == "authentication_failed"
        assert all(p.get("returnImmediately") is True and p.get("maxEvents") == 100 for p in transmitter.polls)
        kinds = {r["kind"]: r["effect"] for r in signals(setup.broker)}
        assert kinds == {CAEP + "session-revoked": "revoke_user", RISC + "identifier-changed": "record_only"}


async def test_the_poller_backs_off_and_recovers(broker_factory: BrokerFactory, redis_server: RedisServer) -> None:
    transmitter = SsfTransmitter(audience="")
    transmitter.poll_status = 503
    with ssf_broker(broker_factory, transmitter) as setup:
        _, alice = tokens_for(setup.broker, "alice")
        jti = transmitter.enqueue(
            transmitter.sign(
                RISC + "account-disabled", sub_id={"format": "opaque", "id": local_subject(alice["access_token"])}
            )
        )
        await asyncio.sleep(0.3)
        assert jti in transmitter.queue
        transmitter.poll_status = 200
        async with verifier_for(setup.broker, redis_server) as verifier:
            await refused_within(verifier, alice["access_token"], bound=5.0)


def test_stream_configuration_is_checked() -> None:
    base = {"id": "okta", "provider": "demo-ldap", "issuer": "https://corp.okta.com"}
    push = {**base, "delivery": "push", "push": {"authorization": PUSH_TOKEN}}
    assert SharedSignalsConfig.model_validate({"streams": [push]}).streams[0].audience is None
    for wrong in (
        {**base, "delivery": "push"},  # no token
        {**base, "delivery": "poll"},  # no poll endpoint
        {**push, "push": {"authorization": "short"}},
        {**push, "algorithms": ["HS256"]},
        {**push, "algorithms": ["none"]},
        {**push, "issuer": "http://corp.okta.com"},  # plain http off loopback
        {**push, "id": "a/b"},
    ):
        with pytest.raises(ValidationError):
            SharedSignalsConfig.model_validate({"streams": [wrong]})
    with pytest.raises(ValidationError):
        SharedSignalsConfig.model_validate({"streams": [push, push]})


def test_a_stream_names_a_configured_provider(redis_server: RedisServer, slapd: Slapd) -> None:
    transmitter = SsfTransmitter(audience="")
    text = broker_yaml(
        1,
        redis_server.url,
        slapd,
        prefix="x",
        extra=streams_yaml(transmitter).replace(
            f"provider: {PROVIDER}\n      issuer: {transmitter.issuer}\n      delivery: poll",
            f"provider: nobody\n      issuer: {transmitter.issuer}\n      delivery: poll",
        ),
    )
    with pytest.raises(ConfigError) as refused:
        parse_config(text)
    found = [(p.path, p.message) for p in refused.value.problems]
    assert found == [("shared_signals.streams[1].provider", "no provider has id 'nobody'")]


def test_subject_identifiers() -> None:
    assert subject_of({"format": "email", "email": "a@x.com"}) == Subject(username="a@x.com")
    assert subject_of({"format": "account", "uri": "acct:a@x.com"}) == Subject(username="a@x.com")
    assert subject_of({"format": "iss_sub", "iss": "i", "sub": "s"}) == Subject(subject="s")
    assert subject_of({"format": "opaque", "id": "o"}) == Subject(subject="o")
    assert subject_of(
        {"format": "complex", "user": {"format": "opaque", "id": "o"}, "session": {"format": "opaque", "id": "sid"}}
    ) == Subject(subject="o", session="sid")
    for unusable in (
        None,
        "a",
        {},
        {"format": "email"},
        {"format": "phone_number", "phone_number": "+1"},
        {"format": "account", "uri": "mailto:a"},
        {"format": "complex"},
        {"format": "opaque", "id": 5},
        {"format": "opaque", "id": "x" * 600},
    ):
        assert subject_of(unusable) is None
