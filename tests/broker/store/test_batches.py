"""Commands of concurrent requests sent to one Redis node together (broker.store.batches): each
caller gets its own reply or error, within the connection's deadline, and a grant's rotation is
the same atomic step it was."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from broker.devstack import RedisServer
from broker.store.batches import CommandBatches
from broker.store.client import create_redis
from broker.store.keys import Keys
from broker.store.records import Grant
from broker.store.redis_store import RedisStore


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path, persist=False).start()
    yield server
    server.stop()


async def test_each_caller_gets_its_own_reply_and_only_its_own_error(server: RedisServer) -> None:
    client = create_redis(server.url)
    assert isinstance(client, aioredis.Redis)
    batches = CommandBatches(client.connection_pool)
    await client.set("text", "not a number")
    try:
        replies = await asyncio.gather(
            batches.execute("SET", "a", "1"),
            batches.execute("INCR", "text"),
            batches.execute("GET", "a"),
            batches.execute("PING"),
            return_exceptions=True,
        )
        assert replies[0] == b"OK"  # raw replies, as a script's
        assert isinstance(replies[1], ResponseError)
        assert replies[2:] == [b"1", b"PONG"]
        # One batch: the four commands went over one connection (besides the one of the SET before).
        assert len(client.connection_pool._available_connections) == 1  # type: ignore[attr-defined]
    finally:
        await client.aclose()


async def test_a_stalled_redis_fails_every_caller_within_the_socket_timeout(server: RedisServer) -> None:
    client = create_redis(server.url, socket_timeout=0.3)
    assert isinstance(client, aioredis.Redis)
    batches = CommandBatches(client.connection_pool)
    admin = aioredis.Redis.from_url(server.url)
    try:
        await batches.execute("PING")
        await admin.execute_command("CLIENT", "PAUSE", "1500", "ALL")  # type: ignore[no-untyped-call]
        began = time.monotonic()
        results = await asyncio.gather(*(batches.execute("GET", f"k{n}") for n in range(5)), return_exceptions=True)
        assert time.monotonic() - began < 1.0
        assert all(isinstance(result, RedisTimeoutError) for result in results), results
        await asyncio.sleep(1.5)
        assert await batches.execute("PING") == b"PONG"  # the stalled connection was dropped, not reused
    finally:
        await admin.aclose()
        await client.aclose()


async def test_a_leader_cancelled_while_gathering_fails_its_followers(server: RedisServer) -> None:
    client = create_redis(server.url)
    assert isinstance(client, aioredis.Redis)
    batches = CommandBatches(client.connection_pool)
    try:
        leader = asyncio.ensure_future(batches.execute("PING"))
        follower = asyncio.ensure_future(batches.execute("PING"))
        await asyncio.sleep(0)  # the leader gathers, the follower joins
        leader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await leader
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(follower, 2)
        assert await batches.execute("PING") == b"PONG"
    finally:
        await client.aclose()


async def test_concurrent_rotations_each_get_their_own_outcome(server: RedisServer) -> None:
    store = RedisStore(create_redis(server.url), Keys("batches"))
    now = time.time()
    try:
        for n in range(20):
            grant = Grant(grant_id=f"g{n}", subject="alice", status="active", expires_at=now + 600, scopes="a")
            await store.create_grant(grant, "h1", refresh_ttl=600, grant_ttl=600)

        def rotate(n: int, new: str):  # type: ignore[no-untyped-def]
            return store.rotate_refresh(f"g{n}", "h1", new, successor=f"s{n}", new_ttl=600, rotated_ttl=600, scopes="a")

        first = await asyncio.gather(*(rotate(n, "h2") for n in range(20)))
        assert [result.outcome for result in first] == ["ok"] * 20
        again = await asyncio.gather(*(rotate(n, "h3") for n in range(20)))
        assert [(result.outcome, result.successor) for result in again] == [("rotated", f"s{n}") for n in range(20)]
    finally:
        await store.redis.aclose()
