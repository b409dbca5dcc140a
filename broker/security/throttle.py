"""Brute-force protection for password sign-in: failures counted per username and per client IP
in Redis, with a lockout window. A locked username is refused before the directory is asked,
whether or not the account exists, so the lock reveals nothing."""

from __future__ import annotations

from dataclasses import dataclass

from broker.store.client import RedisClient
from broker.store.keys import Keys, digest

_FAIL = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int = 0


class LoginThrottle:
    def __init__(self, redis: RedisClient, keys: Keys, *, per_user: int, per_ip: int, window: int) -> None:
        self.redis = redis
        self.keys = keys
        self.per_user = per_user
        self.per_ip = per_ip
        self.window = window
        self._fail = redis.register_script(_FAIL)

    def _user_key(self, provider_id: str, username: str) -> str:
        return f"{self.keys.prefix}:{{rl:u:{digest(provider_id + ':' + username.lower())[:32]}}}"

    def _ip_key(self, ip: str) -> str:
        return f"{self.keys.prefix}:{{rl:ip:{digest(ip)[:32]}}}"

    async def check(self, provider_id: str, username: str, ip: str | None) -> Verdict:
        keys = [self._user_key(provider_id, username)] + ([self._ip_key(ip)] if ip else [])
        limits = [self.per_user] + ([self.per_ip] if ip else [])
        for key, limit in zip(keys, limits, strict=True):
            count = await self.redis.get(key)
            if count is not None and int(count) >= limit:
                ttl = await self.redis.ttl(key)
                return Verdict(False, max(int(ttl), 1))
        return Verdict(True)

    async def failed(self, provider_id: str, username: str, ip: str | None) -> None:
        await self._fail(keys=[self._user_key(provider_id, username)], args=[self.window])
        if ip:
            await self._fail(keys=[self._ip_key(ip)], args=[self.window])

    async def succeeded(self, provider_id: str, username: str) -> None:
        await self.redis.delete(self._user_key(provider_id, username))
