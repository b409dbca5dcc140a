"""Revoked grant ids, kept in memory and current without a Redis round trip per call.

Loaded from the broker's sorted set at start, kept current through pub/sub, and loaded again
after any disconnect. The set is the durable record (the broker writes it in the same step as
the announcement), so what the feed missed while it was down is loaded on reconnecting; while
Redis is unreachable the feed is retried at least every ``RETRY_AT_MOST`` seconds, so the view
is whole again within about a second of Redis answering. ``is_revoked`` is a set lookup.
``stale`` tells when the view could be older than ``max_staleness`` seconds (Redis
unreachable), so the caller can fail closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from mcp_broker_verifier import revocation_keys
from mcp_broker_verifier.redis_client import RedisClient

_log = structlog.get_logger("mcp_broker_verifier.revocations")

PING_EVERY = 1.0  # seconds of silence on the feed before asking Redis whether it is still there
RECONNECT_AFTER = 5.0  # seconds without any answer before the feed is taken for dead and reopened
RETRY_AT_MOST = 0.5  # the longest wait between reconnect attempts (a refused connect costs nothing)
RELOAD_EVERY = 300.0  # seconds between reloads of the set, which drop grants past their tokens' life


class RevocationWatcher:
    def __init__(self, redis: RedisClient, *, key_prefix: str = "mcpb", max_staleness: float = 30.0) -> None:
        self.redis = redis
        self.set_key = revocation_keys.revoked_set(key_prefix)
        self.channel = revocation_keys.revocation_channel(key_prefix)
        self.max_staleness = max_staleness
        self._revoked: set[str] = set()
        self._last_ok = 0.0
        self._loaded_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()
        self._stopping = False

    def is_revoked(self, grant_id: str) -> bool:
        return grant_id in self._revoked

    @property
    def stale(self) -> bool:
        return time.monotonic() - self._last_ok > self.max_staleness

    @property
    def size(self) -> int:
        return len(self._revoked)

    async def start(self, wait: float = 5.0) -> None:
        self._task = asyncio.create_task(self._run())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._synced.wait(), wait)

    async def stop(self) -> None:
        # redis-py may swallow a cancellation that lands inside a read, so the loop also
        # checks a flag, and stop() never waits long.
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, 3.0)

    async def _load(self) -> None:
        now = time.time()
        members = await self.redis.zrangebyscore(self.set_key, now, "+inf")
        self._revoked = {m.decode() if isinstance(m, bytes) else str(m) for m in members}
        self._loaded_at = time.monotonic()

    async def _drop_idle_connections(self) -> None:
        # Pooled connections opened before Redis went away are dead, and redis-py does not always
        # check one before handing it out: the first load after a restart would fail on it and
        # cost another retry. Idle ones only; a cluster client keeps its pools per node.
        pool = getattr(self.redis, "connection_pool", None)
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.disconnect(inuse_connections=False)

    def _done(self) -> bool:
        # A cancellation swallowed inside redis-py still shows as a pending cancel request.
        task = asyncio.current_task()
        return self._stopping or (task is not None and task.cancelling() > 0)

    async def _run(self) -> None:
        backoff = 0.1
        while not self._done():
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                await self._load()  # after subscribing, so nothing published in between is lost
                self._last_ok = last_ping = time.monotonic()
                self._synced.set()
                backoff = 0.1
                while not self._done():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=PING_EVERY / 2)
                    now = time.monotonic()
                    if message is not None:  # the server spoke (a revocation, or a pong): the feed is alive
                        self._last_ok = now
                        if message.get("type") == "message":
                            data = message["data"]
                            self._revoked.add(data.decode() if isinstance(data, bytes) else str(data))
                    elif now - self._last_ok > RECONNECT_AFTER:
                        raise ConnectionError(f"no answer from Redis for {RECONNECT_AFTER:g} s")
                    if now - self._loaded_at >= RELOAD_EVERY:
                        # Ids heard on the feed carry no expiry; the set in Redis does, so a
                        # reload forgets grants whose tokens have all expired (bounded memory).
                        await self._load()
                    if now - self._last_ok >= PING_EVERY and now - last_ping >= PING_EVERY:
                        await pubsub.ping()  # answered by a pong message, read above
                        last_ping = now
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._done():
                    break
                _log.warning("revocation_feed_lost", error=f"{type(exc).__name__}: {exc}", retry_in=backoff)
                await self._drop_idle_connections()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RETRY_AT_MOST)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
