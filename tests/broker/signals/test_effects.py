"""The signals core (``broker.signals``) against a real Redis: what each effect revokes, what it
leaves, what it records; and the back-channel logout receiver's single use of a ``jti``."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import pytest
from prometheus_client import REGISTRY

from broker.config.models import MappingRule, ResourceConfig, ScopeConfig
from broker.devstack import RedisServer
from broker.policy import Policy
from broker.signals.backchannel import LogoutRefused, receive
from broker.signals.effects import Signal, SignalEffects
from broker.store.client import create_redis
from broker.store.keys import Keys
from broker.store.records import Grant, StoredIdentity
from broker.store.redis_store import RedisStore
from providers.base import UpstreamRejected

NOTES = ResourceConfig(
    id="notes",
    uri="https://notes.example.com/mcp",
    name="Notes",
    scopes=[ScopeConfig(name="notes:read", description="r"), ScopeConfig(name="notes:write", description="w")],
)
POLICY = Policy(
    [NOTES],
    [
        MappingRule(id="r", resource="notes", provider="okta", groups=["readers"], scopes=["notes:read"]),
        MappingRule(id="w", resource="notes", provider="okta", groups=["writers"], scopes=["notes:write"]),
    ],
)


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    client = create_redis(redis_server.url)
    yield RedisStore(client, Keys(f"s{secrets.token_hex(4)}"))
    await client.aclose()


def effects_on(store: RedisStore) -> SignalEffects:
    return SignalEffects(store, lambda: POLICY)


async def a_grant(
    store: RedisStore,
    user: str = "alice",
    scopes: str = "notes:read notes:write",
    provider: str = "okta",
    sid: str | None = None,
) -> str:
    grant_id = secrets.token_hex(8)
    identity = StoredIdentity(
        provider_id=provider,
        subject=f"{provider}:{user}-id",
        username=user,
        groups=("readers", "writers"),
        upstream_session=sid,
    )
    now = time.time()
    grant = Grant(
        grant_id=grant_id,
        subject=identity.subject,
        expires_at=now + 600,
        client_id="c",
        username=user,
        provider_id=provider,
        resource=NOTES.uri,
        scopes=scopes,
        identity=identity,
        created_at=now,
        last_refresh=now,
    )
    await store.create_grant(grant, secrets.token_hex(8), 600, 600)
    return grant_id


async def active(store: RedisStore, grant_id: str) -> bool:
    grant = await store.get_grant(grant_id)
    return grant is not None and grant.active


def scim(kind: str = "user_deactivated") -> Signal:
    return Signal(source="scim", kind=kind, provider_id="okta", signal_id=secrets.token_hex(4))


async def test_revoke_user_by_subject_or_username_and_only_at_that_provider(store: RedisStore) -> None:
    effects = effects_on(store)
    first, second = await a_grant(store), await a_grant(store)
    bob = await a_grant(store, "bob")
    elsewhere = await a_grant(store, provider="ldap")
    before = REGISTRY.get_sample_value("mcpb_signal_to_revocation_seconds_count", {"source": "scim"}) or 0
    outcome = await effects.revoke_user("okta", subject="alice-id", reason="scim_user_deactivated", signal=scim())
    assert sorted(outcome.revoked) == sorted([first, second])
    assert outcome.subject == "okta:alice-id"
    assert not await active(store, first)
    assert await active(store, bob)
    assert await active(store, elsewhere)
    assert first in await store.revoked()  # announced to resource servers
    assert REGISTRY.get_sample_value("mcpb_signal_to_revocation_seconds_count", {"source": "scim"}) == before + 1
    by_name = await effects.revoke_user("okta", username="BOB", reason="scim_user_deleted", signal=scim("user_deleted"))
    assert by_name.revoked == (bob,)
    assert by_name.subject == "okta:bob-id"
    records = await effects.recent("okta")
    assert [r["kind"] for r in records] == ["user_deleted", "user_deactivated"]
    assert records[1]["revoked"] == outcome.to_json()["revoked"]
    assert records[1]["effect"] == "revoke_user"
    assert await effects.recent("ldap") == []


async def test_reapply_policy_keeps_what_holds_narrows_what_shrinks_revokes_what_is_empty(store: RedisStore) -> None:
    effects = effects_on(store)
    both = await a_grant(store)
    read_only = await a_grant(store, scopes="notes:read")
    outcome = await effects.reapply_policy(
        "okta", "okta:alice-id", groups=frozenset({"readers"}), signal=scim("group_membership_removed")
    )
    assert outcome.effect == "reapply_policy"
    assert outcome.revoked == ()
    assert outcome.narrowed == (both,)
    assert outcome.unchanged == (read_only,)
    narrowed = await store.get_grant(both)
    assert narrowed is not None
    assert narrowed.active
    assert narrowed.scope_list == ["notes:read"]
    assert narrowed.epoch == 1
    assert narrowed.token_handle == f"{both}.1"
    ended = await store.revoked()
    assert both in ended  # the tokens carrying notes:write (handle of epoch 0) are ended ...
    assert f"{both}.1" not in ended  # ... and the narrowed grant's next ones are not
    assert (await effects.recent("okta"))[0]["narrowed"] == [both]
    nothing = await effects.reapply_policy("okta", "alice-id", groups=frozenset(), signal=scim("group_removed"))
    assert sorted(nothing.revoked) == sorted([both, read_only])
    assert f"{both}.1" in await store.revoked()  # revoking announces the grant's current handle


async def test_reapply_policy_narrows_again_from_a_grant_narrowed_meanwhile(store: RedisStore) -> None:
    grant_id = await a_grant(store)
    grant = await store.get_grant(grant_id)
    assert grant is not None
    # Another replica narrowed it after this one read it: the stale narrowing writes nothing.
    assert (
        await store.narrow_grant(grant_id, "notes:read", epoch=0, tokens_expire_at=time.time() + 60, reason="x") == "ok"
    )
    assert (
        await store.narrow_grant(grant_id, "notes:write", epoch=0, tokens_expire_at=time.time() + 60, reason="x")
        == "stale"
    )
    kept = await store.get_grant(grant_id)
    assert kept is not None
    assert kept.scope_list == ["notes:read"]
    assert kept.epoch == 1
    outcome = await effects_on(store).reapply_policy(
        "okta", "alice-id", groups=frozenset({"writers"}), signal=scim("group_membership_removed")
    )
    assert outcome.revoked == (grant_id,)  # notes:read was all it had left


async def test_reapply_policy_without_groups_uses_the_kept_groups(store: RedisStore) -> None:
    grant_id = await a_grant(store)
    outcome = await effects_on(store).reapply_policy("okta", "alice-id", signal=scim("policy"))
    assert outcome.unchanged == (grant_id,)
    assert await active(store, grant_id)


async def test_revoke_session_and_record_only(store: RedisStore) -> None:
    effects = effects_on(store)
    in_session = await a_grant(store, sid="op-sid-1")
    other_session = await a_grant(store, sid="op-sid-2")
    signal = Signal(source="backchannel_logout", kind="logout", provider_id="okta", detail={"sid": "op-sid-1"})
    outcome = await effects.revoke_session("okta", "op-sid-1", reason="backchannel_logout", signal=signal)
    assert outcome.revoked == (in_session,)
    assert await active(store, other_session)
    noted = await effects.record_only("okta", subject="alice-id", note="assurance level changed", signal=scim("x"))
    assert noted.revoked == ()
    assert noted.subject == "okta:alice-id"
    assert await active(store, other_session)
    [latest, logout] = await effects.recent("okta")
    assert latest["effect"] == "record_only"
    assert latest["note"] == "assurance level changed"
    assert logout["detail"] == {"sid": "op-sid-1"}


@dataclass(frozen=True)
class Token:
    jti: str
    sub: str | None
    sid: str | None
    expires_at: float


@dataclass
class FakeOidc:
    """A provider whose verification the test decides (the real one: test_logout_token.py)."""

    answer: Token | None
    id: str = "okta"
    issuer: str = "https://okta.example.com"

    async def verify_logout_token(self, raw: str) -> Token:
        if self.answer is None:
            raise UpstreamRejected("the logout token signature does not verify")
        return self.answer


async def test_a_logout_token_is_spent_once_and_a_refused_one_changes_nothing(store: RedisStore) -> None:
    effects = effects_on(store)
    grant_id = await a_grant(store, sid="op-sid-9")
    with pytest.raises(LogoutRefused):
        await receive(FakeOidc(None), "okta", "forged", effects)
    with pytest.raises(LogoutRefused):
        await receive(FakeOidc(None), "okta", None, effects)
    with pytest.raises(LogoutRefused):
        await receive(None, "nobody", "x", effects)
    assert await active(store, grant_id)
    assert await effects.recent("okta") == []
    token = Token(jti=secrets.token_hex(4), sub=None, sid="op-sid-9", expires_at=time.time() + 60)
    provider = FakeOidc(replace(token, sid="another-session"))
    replayed = FakeOidc(token)
    await receive(provider, "okta", "t", effects)  # a session we do not know: nothing revoked
    assert await active(store, grant_id)
    with pytest.raises(LogoutRefused, match="already used"):
        await receive(replayed, "okta", "t", effects)  # same jti
    assert await active(store, grant_id)
    fresh = FakeOidc(replace(token, jti=secrets.token_hex(4)))
    outcome = await receive(fresh, "okta", "t", effects)
    assert outcome.revoked == (grant_id,)


async def test_a_logout_token_whose_effect_failed_is_handled_when_the_op_retries(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis fails after the jti was spent: the OP's retry of the same token must revoke, not be
    refused as a replay (nothing lost)."""
    effects = effects_on(store)
    grant_id = await a_grant(store, sid="op-sid-7")
    provider = FakeOidc(Token(jti=secrets.token_hex(4), sub=None, sid="op-sid-7", expires_at=time.time() + 60))
    real = store.session_grant_ids

    async def unreachable(provider_id: str, session: str) -> list[str]:
        raise ConnectionError("Redis went away")

    monkeypatch.setattr(store, "session_grant_ids", unreachable)
    with pytest.raises(ConnectionError):
        await receive(provider, "okta", "t", effects)
    assert await active(store, grant_id)
    monkeypatch.setattr(store, "session_grant_ids", real)
    outcome = await receive(provider, "okta", "t", effects)  # the same token again
    assert outcome.revoked == (grant_id,)
    with pytest.raises(LogoutRefused, match="already used"):
        await receive(provider, "okta", "t", effects)  # handled: now it is spent
