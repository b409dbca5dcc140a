"""A fixed-window request limit per client address, counted in Redis (shared by every replica).

Used where an unauthenticated request creates state: dynamic client registration (RFC 7591 §3
leaves abuse to the server; RFC 9700 §4.15 and the MCP security best practices ask for limits).
"""

from __future__ import annotations

from broker.security.throttle import Verdict
from broker.store.client import RedisClient
from broker.store.keys import Keys, digest

_HIT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {n, redis.call('TTL', KEYS[1])}
"""


class RateLimit:
    def __init__(self, redis: RedisClient, keys: Keys, *, name: str, limit: int, window: int) -> None:
        self.keys = keys
        self.name = name
        self.limit = limit
        self.window = window
        self._hit = redis.register_script(_HIT)

    def _key(self, subject: str) -> str:
        return f"{self.keys.prefix}:{{rl:{self.name}:{digest(subject)[:32]}}}"

    async def hit(self, subject: str) -> Verdict:
        """Count one request by ``subject`` (a client IP); refused once the window's limit is passed."""
        count, ttl = await self._hit(keys=[self._key(subject)], args=[self.window])
        if int(count) > self.limit:
            return Verdict(False, max(int(ttl), 1))
        return Verdict(True)
