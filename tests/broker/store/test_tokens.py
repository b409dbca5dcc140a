"""The token store against the session's real Redis: what it keeps, and for how long."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import redis.asyncio as aioredis

from broker.store.keys import Keys
from broker.store.records import Grant
from broker.store.redis_store import RedisStore
from tests.broker.store.conformance import a_code


def store_for(client: aioredis.Redis) -> RedisStore:
    return RedisStore(client, Keys(f"t{secrets.token_hex(4)}"))


def grant(grant_id: str, lifetime: float) -> Grant:
    return Grant(grant_id=grant_id, subject="alice", status="active", expires_at=time.time() + lifetime)


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


async def test_a_lock_is_released_only_by_its_holder(redis_client: aioredis.Redis) -> None:
    store = store_for(redis_client)
    slow = await store.lock_grant("g", 0.05)
    assert slow
    await asyncio.sleep(0.1)  # the slow holder's lock expires while it still works
    current = await store.lock_grant("g", 10)
    assert current
    await store.unlock_grant("g", slow)  # the slow holder, done at last, releases "its" lock
    assert not await store.lock_grant("g", 10)  # the current holder's lock is untouched
    await store.unlock_grant("g", current)
    assert await store.lock_grant("g", 10)


async def test_a_code_presented_by_another_client_is_refused_unspent(redis_client: aioredis.Redis) -> None:
    store = store_for(redis_client)
    await store.save_code("g", a_code("h", "owner"), 60)
    refused = await store.take_code("g", "h", "thief")
    assert (refused.outcome, refused.code) == ("wrong_client", None)  # nothing of the code is shown
    taken = await store.take_code("g", "h", "owner")
    assert taken.outcome == "ok"
    assert taken.code is not None
    assert taken.code.client_id == "owner"
    assert (await store.take_code("g", "h", "owner")).outcome == "missing"  # spent once


async def test_a_revocation_is_one_script_on_one_node(redis_client: aioredis.Redis) -> None:
    """Marking the grant revoked, recording it for resource servers and announcing it: one command,
    so no crash can fall between them."""
    store = store_for(redis_client)
    await store.revoke_grant("warm-up", "test")  # loads the script, so the count below is exact
    await store.create_grant(grant("g", 600), "h", refresh_ttl=600, grant_ttl=600)
    listener = redis_client.pubsub()
    await listener.subscribe(store.keys.revocation_channel())
    commands: list[str] = []
    real = redis_client.execute_command

    async def counting(*args: Any, **options: Any) -> Any:
        commands.append(str(args[0]))
        return await real(*args, **options)

    try:
        redis_client.execute_command = counting  # type: ignore[method-assign]
        assert await store.revoke_grant("g", "test")
        redis_client.execute_command = real  # type: ignore[method-assign]
        assert commands == ["EVALSHA"]
        revoked = await store.get_grant("g")
        assert revoked is not None
        assert revoked.status == "revoked"
        assert "g" in await store.revoked()
        heard = await listener.get_message(ignore_subscribe_messages=True, timeout=2)
        heard = heard or await listener.get_message(ignore_subscribe_messages=True, timeout=2)
        assert heard is not None
        assert heard["data"] == b"g"
    finally:
        redis_client.execute_command = real  # type: ignore[method-assign]
        await listener.aclose()  # type: ignore[no-untyped-call]
