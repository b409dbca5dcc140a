"""The store's scripts on one node take a shorter path than redis-py's ``execute_command``
(redis_store._OneNodeScript): the same answers, the same deadlines, the same recovery."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from broker.devstack import RedisServer
from broker.store.client import create_redis
from broker.store.keys import Keys
from broker.store.records import Grant, PendingFlow
from broker.store.redis_store import RedisStore, _OneNodeScript


async def _store_with_grant(url: str, socket_timeout: float = 5.0) -> RedisStore:
    store = RedisStore(create_redis(url, socket_timeout=socket_timeout), Keys("scripts"))
    grant = Grant(grant_id="g", subject="alice", status="active", expires_at=time.time() + 600, scopes="a")
    await store.create_grant(grant, "h1", refresh_ttl=600, grant_ttl=600)
    return store


def _rotate(store: RedisStore, old: str, new: str):  # type: ignore[no-untyped-def]
    return store.rotate_refresh("g", old, new, successor="s", new_ttl=600, rotated_ttl=600, scopes="a")


async def test_one_node_takes_the_short_path_and_a_forgotten_script_is_loaded_again(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, persist=False).start()
    admin = aioredis.Redis.from_url(server.url)
    try:
        store = await _store_with_grant(server.url)
        assert isinstance(store._rotate, _OneNodeScript)
        await admin.script_flush()  # a restarted or failed-over Redis knows no script
        assert (await _rotate(store, "h1", "h2")).outcome == "ok"
        again = await _rotate(store, "h1", "h3")
        assert (again.outcome, again.successor) == ("rotated", "s")
        await store.redis.aclose()
    finally:
        await admin.aclose()
        server.stop()


async def test_a_stalled_redis_fails_within_the_socket_timeout_and_the_next_call_recovers(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, persist=False).start()
    admin = aioredis.Redis.from_url(server.url)
    try:
        store = await _store_with_grant(server.url, socket_timeout=0.3)
        await admin.execute_command("CLIENT", "PAUSE", "1500", "ALL")
        began = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            await _rotate(store, "h1", "h2")
        assert time.monotonic() - began < 1.0  # the read deadline, not the pause
        await asyncio.sleep(1.5)  # the pause ends; the timed-out connection was dropped, not reused
        assert (await _rotate(store, "h1", "h2")).outcome == "ok"
        await store.redis.aclose()
    finally:
        await admin.aclose()
        server.stop()


async def test_a_connection_redis_closed_fails_the_call_and_is_replaced(tmp_path: Path) -> None:
    """As on redis-py's own path (the client retries nothing): the call on the closed connection
    fails, the next one connects again."""
    server = RedisServer(tmp_path, persist=False).start()
    admin = aioredis.Redis.from_url(server.url)
    try:
        store = await _store_with_grant(server.url)
        assert await admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes") >= 1
        with pytest.raises(RedisConnectionError):
            await _rotate(store, "h1", "h2")
        assert (await _rotate(store, "h1", "h2")).outcome == "ok"
        await store.redis.aclose()
    finally:
        await admin.aclose()
        server.stop()


async def test_the_sign_in_path_plain_commands_take_the_short_path_with_the_same_deadline(tmp_path: Path) -> None:
    """Flows, codes and sessions (GET, SET EX, SET KEEPTTL XX) go by the batches too: the TTL
    set, a stalled Redis failing within socket_timeout, the next call on a new connection."""
    server = RedisServer(tmp_path, persist=False).start()
    admin = aioredis.Redis.from_url(server.url)
    try:
        store = RedisStore(create_redis(server.url, socket_timeout=0.3), Keys("plain"))
        assert store._batches is not None
        flow = PendingFlow(request={"client_id": "c1"}, csrf_hash="h", created_at=time.time())
        await store.save_flow("f", flow, 600)
        assert 590 < await admin.ttl(store.keys.flow("f")) <= 600
        assert await store.update_flow("f", flow.approve(provider="ldap", binding_hash="b", client_id="c1"))
        assert 590 < await admin.ttl(store.keys.flow("f")) <= 600  # KEEPTTL
        assert not await store.update_flow("missing", flow)  # XX: never created
        assert await admin.exists(store.keys.flow("missing")) == 0
        await admin.execute_command("CLIENT", "PAUSE", "1500", "ALL")
        began = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            await store.get_flow("f")
        assert time.monotonic() - began < 1.0
        await asyncio.sleep(1.5)
        assert (await store.get_flow("f") or flow).approved
        await store.redis.aclose()
        single = RedisStore(aioredis.Redis.from_url(server.url, single_connection_client=True), Keys("plain"))
        assert single._batches is None  # keeps redis-py's path
        assert (await single.get_flow("f") or flow).approved
        await single.redis.aclose()
    finally:
        await admin.aclose()
        server.stop()
