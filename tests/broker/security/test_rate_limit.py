"""The fixed-window limit per address, in the session's real Redis."""

from __future__ import annotations

import secrets

import redis.asyncio as aioredis

from broker.security.rate_limit import RateLimit
from broker.store.keys import Keys
from broker.store.redis_store import RedisStore


async def test_the_limit_holds_per_subject_and_says_when_to_retry(redis_client: aioredis.Redis) -> None:
    limit = RateLimit(RedisStore(redis_client, Keys(f"t{secrets.token_hex(4)}")), name="reg", limit=2, window=30)
    assert [(await limit.hit("10.0.0.1")).allowed for _ in range(3)] == [True, True, False]
    refused = await limit.hit("10.0.0.1")
    assert not refused.allowed
    assert 1 <= refused.retry_after <= 30
    assert (await limit.hit("10.0.0.2")).allowed  # another address has its own count


async def test_the_window_ends(redis_client: aioredis.Redis) -> None:
    keys = Keys(f"t{secrets.token_hex(4)}")
    limit = RateLimit(RedisStore(redis_client, keys), name="reg", limit=1, window=30)
    await limit.hit("10.0.0.1")
    assert not (await limit.hit("10.0.0.1")).allowed
    for key in await redis_client.keys(f"{keys.prefix}:*"):
        assert 0 < await redis_client.ttl(key) <= 30  # the counter expires with its window
        await redis_client.delete(key)  # as if the window had passed
    assert (await limit.hit("10.0.0.1")).allowed
