"""The revocation view: loaded at start, kept current through pub/sub, reopened after a
disconnect, quiet when nothing happens, and stale (so callers fail closed) when Redis is gone."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from broker.devstack import RedisServer
from broker.store.client import create_redis
from broker.store.keys import Keys
from broker.store.records import Grant
from broker.store.redis_store import RedisStore
from mcp_broker_verifier.revocations import RevocationWatcher
from tests.faults import die_after


async def eventually(check: object, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "never happened"
        await asyncio.sleep(0.02)


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A Redis of this test's own, so its command counts and its death touch nobody else."""
    server = RedisServer(tmp_path, persist=False).start()
    yield server
    server.stop()


async def test_loaded_at_start_then_current_through_pubsub(
    redis_client: aioredis.Redis, redis_server: RedisServer
) -> None:
    prefix = f"t{secrets.token_hex(4)}"
    await redis_client.zadd(f"{prefix}:{{revoked}}", {"g-before": time.time() + 600, "g-expired": time.time() - 1})
    watcher = RevocationWatcher(create_redis(redis_server.url), key_prefix=prefix)
    await watcher.start()
    try:
        assert watcher.is_revoked("g-before")
        assert not watcher.is_revoked("g-expired")  # past its tokens' lifetime: no longer kept
        await redis_client.publish(f"{prefix}:revocations", "g-later")
        await eventually(lambda: watcher.is_revoked("g-later"), 1.0)
        assert not watcher.stale
    finally:
        await watcher.stop()


async def test_an_idle_watcher_barely_talks_to_redis(own_redis: RedisServer) -> None:
    client = create_redis(own_redis.url)
    watcher = RevocationWatcher(client, key_prefix="idle")
    await watcher.start()
    try:
        before = (await client.info("stats"))["total_commands_processed"]
        await asyncio.sleep(3)
        after = (await client.info("stats"))["total_commands_processed"]
        assert after - before <= 10  # a ping a second at most (it once spun on its own pongs)
        assert not watcher.stale
    finally:
        await watcher.stop()
        await client.aclose()


async def test_a_dropped_feed_is_reopened_and_what_was_missed_is_loaded(own_redis: RedisServer) -> None:
    client = create_redis(own_redis.url)
    watcher = RevocationWatcher(client, key_prefix="drop")
    await watcher.start()
    admin: aioredis.Redis = aioredis.Redis.from_url(own_redis.url)
    try:
        # A revocation whose message this watcher never got (as if published while it was away).
        await admin.zadd("drop:{revoked}", {"g-missed": time.time() + 600})
        assert not watcher.is_revoked("g-missed")
        assert await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 1
        await eventually(lambda: watcher.is_revoked("g-missed"))  # reloaded on reconnecting
        await admin.publish("drop:revocations", "g-after")
        await eventually(lambda: watcher.is_revoked("g-after"), 1.0)
    finally:
        await watcher.stop()
        await client.aclose()
        await admin.aclose()


async def test_the_view_goes_stale_when_redis_is_gone(own_redis: RedisServer) -> None:
    client = create_redis(own_redis.url)
    watcher = RevocationWatcher(client, key_prefix="gone", max_staleness=1.0)
    await watcher.start()
    try:
        assert not watcher.stale
        own_redis.stop()
        await eventually(lambda: watcher.stale, 5.0)
    finally:
        await watcher.stop()
        await client.aclose()


async def test_ids_heard_on_the_feed_are_forgotten_with_their_tokens(
    redis_client: aioredis.Redis, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mcp_broker_verifier.revocations

    monkeypatch.setattr(mcp_broker_verifier.revocations, "RELOAD_EVERY", 0.3)
    prefix = f"t{secrets.token_hex(4)}"
    watcher = RevocationWatcher(create_redis(redis_server.url), key_prefix=prefix)
    await watcher.start()
    try:
        await redis_client.zadd(f"{prefix}:{{revoked}}", {"g-live": time.time() + 600, "g-done": time.time() + 0.2})
        for grant in ("g-live", "g-done"):
            await redis_client.publish(f"{prefix}:revocations", grant)
        await eventually(lambda: watcher.is_revoked("g-live") and watcher.is_revoked("g-done"), 1.0)
        # Once g-done's tokens have all expired, the periodic reload drops it; g-live stays.
        await eventually(lambda: not watcher.is_revoked("g-done"), 5.0)
        assert watcher.is_revoked("g-live")
    finally:
        await watcher.stop()


async def test_a_revocation_cut_short_at_any_step_still_reaches_the_watcher(
    redis_client: aioredis.Redis, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker dies (its connection drops) after its n-th Redis command of a revocation: whatever
    it had time to revoke, resource servers learn of, within a second."""
    prefix = f"t{secrets.token_hex(4)}"
    watcher = RevocationWatcher(create_redis(redis_server.url), key_prefix=prefix)
    await watcher.start()
    try:
        for survived in range(1, 7):
            broker = create_redis(redis_server.url)
            store = RedisStore(broker, Keys(prefix))
            grant_id = f"g{survived}"
            await store.create_grant(
                Grant(grant_id=grant_id, subject="alice", status="active", expires_at=time.time() + 600),
                "h",
                refresh_ttl=600,
                grant_ttl=600,
            )
            die_after(monkeypatch, broker, survived)
            with contextlib.suppress(ConnectionError):
                await store.revoke_grant(grant_id, "test")
            await broker.aclose()
            stored = await RedisStore(redis_client, Keys(prefix)).get_grant(grant_id)
            assert stored is not None
            if stored.status == "revoked":
                await eventually(lambda g=grant_id: watcher.is_revoked(g), 1.0)
        assert stored.status == "revoked"  # the last run was not cut short
    finally:
        await watcher.stop()


async def test_a_restarted_redis_is_resynchronised_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis goes away long enough for any reconnect back-off to grow, comes back from its
    append-only file, and a replica revokes a grant the moment it answers: the watcher knows it
    within about a second (it was not subscribed when the announcement went out)."""
    server = RedisServer(tmp_path, persist=True).start()
    client = create_redis(server.url)
    attempts = 0
    subscribe = client.pubsub

    def counting(**options: Any) -> Any:
        nonlocal attempts
        attempts += 1
        return subscribe(**options)

    monkeypatch.setattr(client, "pubsub", counting)
    admin: aioredis.Redis = aioredis.Redis.from_url(server.url)
    await admin.zadd("restart:{revoked}", {"g-before": time.time() + 600})
    await admin.aclose()
    watcher = RevocationWatcher(client, key_prefix="restart")
    await watcher.start()
    try:
        assert watcher.is_revoked("g-before")
        server.stop()
        # Seven failed attempts: a back-off doubling from 0.1 s has reached 5 s by then.
        await eventually(lambda: attempts >= 8, 30.0)
        await asyncio.to_thread(server.start)
        answering = time.monotonic()
        admin = aioredis.Redis.from_url(server.url)
        await admin.zadd("restart:{revoked}", {"g-after": time.time() + 600})
        await admin.publish("restart:revocations", "g-after")  # heard by nobody yet
        await eventually(lambda: watcher.is_revoked("g-after"), 10.0)
        took = time.monotonic() - answering
        assert took < 2.5, f"learned {took:.1f} s after Redis answered again"
        assert watcher.is_revoked("g-before")
        assert not watcher.stale
    finally:
        await watcher.stop()
        await client.aclose()
        await admin.aclose()
        server.stop()
