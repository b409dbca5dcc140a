"""The token store against the session's real Redis: what it keeps, and for how long."""

from __future__ import annotations

import secrets
import time

import redis.asyncio as aioredis

from broker.store.keys import Keys
from broker.store.tokens import TokenStore


def store_for(client: aioredis.Redis) -> TokenStore:
    return TokenStore(client, Keys(f"t{secrets.token_hex(4)}"))


def grant(grant_id: str, lifetime: float) -> dict[str, object]:
    return {"grant_id": grant_id, "subject": "alice", "status": "active", "expires_at": time.time() + lifetime}


async def test_a_shorter_new_grant_does_not_cut_the_users_index_short(redis_client: aioredis.Redis) -> None:
    store = store_for(redis_client)
    await store.create_grant(grant("long", 5000), "h1", refresh_ttl=5000, grant_ttl=5000)
    await store.create_grant(grant("short", 100), "h2", refresh_ttl=100, grant_ttl=100)
    assert await redis_client.ttl(store.keys.user_grants("alice")) > 5000  # as long as the longest grant
    assert sorted(await store.user_grant_ids("alice")) == ["long", "short"]


async def test_revocations_past_their_tokens_lifetime_are_pruned(redis_client: aioredis.Redis) -> None:
    store = store_for(redis_client)
    await redis_client.zadd(store.keys.revoked(), {"ancient": time.time() - 10})
    await store.create_grant(grant("g", 600), "h", refresh_ttl=600, grant_ttl=600)
    assert await store.revoke_grant("g", "test")
    members = {m.decode() for m in await redis_client.zrange(store.keys.revoked(), 0, -1)}
    assert members == {"g"}


async def test_a_rotated_token_keeps_a_small_marker_long_and_its_answer_only_for_the_grace(
    redis_client: aioredis.Redis,
) -> None:
    store = store_for(redis_client)
    await store.create_grant(grant("g", 5000), "h1", refresh_ttl=5000, grant_ttl=5000)
    rotated = await store.rotate_refresh(
        "g", "h1", "h2", successor="sealed-answer", new_ttl=5000, rotated_ttl=5000, successor_ttl=40, scopes="a"
    )
    assert rotated.outcome == "ok"
    marker = await redis_client.get(store.keys.refresh("g", "h1"))
    assert marker is not None
    assert b"sealed-answer" not in marker  # the marker stays small
    assert await redis_client.ttl(store.keys.refresh("g", "h1")) > 4000  # a reuse later is still caught
    assert 0 < await redis_client.ttl(store.keys.successor("g", "h1")) <= 40
    again = await store.rotate_refresh(
        "g", "h1", "h3", successor="other", new_ttl=5000, rotated_ttl=5000, successor_ttl=40, scopes="a"
    )
    assert (again.outcome, again.successor) == ("rotated", "sealed-answer")
    assert await store.get_successor("g", "h1") == "sealed-answer"
