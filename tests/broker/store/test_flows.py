"""Pending sign-in flows in the token store: the per-flow attempt count is one atomic step."""

from __future__ import annotations

import asyncio
import secrets

import redis.asyncio as aioredis

from broker.store.keys import Keys
from broker.store.records import PendingFlow
from broker.store.redis_store import RedisStore


def store_for(client: aioredis.Redis) -> RedisStore:
    return RedisStore(client, Keys(f"t{secrets.token_hex(4)}"))


async def test_parallel_attempts_on_one_flow_each_get_their_own_count(redis_client: aioredis.Redis) -> None:
    store = store_for(redis_client)
    await store.save_flow("f1", PendingFlow(approved=True), ttl=600)
    counts = await asyncio.gather(*(store.count_flow_attempt("f1") for _ in range(20)))
    assert sorted(counts) == list(range(1, 21))
    assert await store.count_flow_attempt("f1") == 21
    assert await store.get_flow("f1") == PendingFlow(approved=True)  # the record itself is untouched


async def test_the_count_lives_no_longer_than_its_flow(redis_client: aioredis.Redis) -> None:
    store = store_for(redis_client)
    await store.save_flow("f2", PendingFlow(), ttl=30)
    assert await store.count_flow_attempt("f2") == 1
    assert 0 < await redis_client.pttl(f"{store.keys.flow('f2')}:attempts") <= 30_000
    await store.take_flow("f2")
    assert await store.count_flow_attempt("f2") == 0  # gone: nothing more is counted
    assert await store.count_flow_attempt("never-was") == 0
    assert not await redis_client.exists(f"{store.keys.flow('never-was')}:attempts")
