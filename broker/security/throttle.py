"""Brute-force protection for password sign-in: attempts counted per username and per client IP
in Redis, with a lockout window. A locked username is refused before the directory is asked,
whether or not the account exists, so the lock reveals nothing.

An attempt takes its place in both counts *before* the directory is asked (one atomic step per
count), so parallel guesses cannot all slip past a check made before any of them was counted.
Once the answer is known the place is settled: a wrong password keeps it; a success clears the
username's count and gives the IP's place back; an answer that is no guess (a locked account,
a directory that cannot be reached) gives both back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from broker.store.client import RedisClient
from broker.store.keys import Keys, digest

# One key per script (the two counts live in different Cluster slots).
_RESERVE = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= tonumber(ARGV[1]) then return {0, redis.call('TTL', KEYS[1])} end
if redis.call('INCR', KEYS[1]) == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return {1, 0}
"""

_RELEASE = """
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then redis.call('DECR', KEYS[1]) end
"""

Outcome = Literal["failed", "succeeded", "void"]


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
        self._reserve = redis.register_script(_RESERVE)
        self._release = redis.register_script(_RELEASE)

    def _user_key(self, provider_id: str, username: str) -> str:
        return f"{self.keys.prefix}:{{rl:u:{digest(provider_id + ':' + username.lower())[:32]}}}"

    def _ip_key(self, ip: str) -> str:
        return f"{self.keys.prefix}:{{rl:ip:{digest(ip)[:32]}}}"

    async def _take(self, key: str, limit: int) -> Verdict:
        taken, ttl = await self._reserve(keys=[key], args=[limit, self.window])
        return Verdict(True) if int(taken) else Verdict(False, max(int(ttl), 1))

    async def reserve(self, provider_id: str, username: str, ip: str | None) -> Verdict:
        """Take a place for one attempt in the username's and the IP's counts, or say how long
        the lock lasts. Every allowed reservation must be settled."""
        user = await self._take(self._user_key(provider_id, username), self.per_user)
        if not user.allowed or not ip:
            return user
        by_ip = await self._take(self._ip_key(ip), self.per_ip)
        if not by_ip.allowed:
            await self._release(keys=[self._user_key(provider_id, username)])
        return by_ip

    async def settle(self, provider_id: str, username: str, ip: str | None, outcome: Outcome) -> None:
        if outcome == "failed":
            return  # the places taken are the failures counted
        if outcome == "succeeded":
            await self.redis.delete(self._user_key(provider_id, username))
        else:
            await self._release(keys=[self._user_key(provider_id, username)])
        if ip:
            await self._release(keys=[self._ip_key(ip)])
