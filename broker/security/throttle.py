"""Brute-force protection for password sign-in: failures counted per username and per client IP
in Redis, with a lockout window. A locked username is refused before the directory is asked,
whether or not the account exists, so the lock reveals nothing.

Each count also tracks the attempts in flight, and an attempt may start only while failures
plus attempts in flight stay under the limit (one atomic step per count): parallel guesses
cannot all slip past a check made before any of them failed. An attempt that would exceed it
waits a moment for those in flight to finish (so a user signing in from several clients at once
is not refused) and is refused only if the lock is reached or the wait runs out. Once answered,
a wrong password counts as a failure; a success clears the username's failures.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Literal

from broker.store.client import RedisClient
from broker.store.keys import Keys, digest

# KEYS: failures, in flight (one slot: both carry the same hash tag). ARGV: limit, window, in-flight TTL.
# Returns {1} started, {0, ttl} locked, {2} busy (wait for attempts in flight).
_START = """
local failures = tonumber(redis.call('GET', KEYS[1]) or '0')
if failures >= tonumber(ARGV[1]) then return {0, redis.call('TTL', KEYS[1])} end
if failures + tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[1]) then return {2, 0} end
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {1, 0}
"""

# KEYS as above. ARGV: 'failed' | 'cleared' | 'void', window.
_FINISH = """
if tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then redis.call('DECR', KEYS[2]) end
if ARGV[1] == 'failed' then
  if redis.call('INCR', KEYS[1]) == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
elseif ARGV[1] == 'cleared' then
  redis.call('DEL', KEYS[1])
end
"""

Outcome = Literal["failed", "succeeded", "void"]
IN_FLIGHT_TTL = 60  # seconds an attempt counts as in flight if its process dies before settling
WAIT = 5.0  # seconds an attempt waits for others in flight before it is refused


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int = 0


class LoginThrottle:
    def __init__(
        self, redis: RedisClient, keys: Keys, *, per_user: int, per_ip: int, window: int, failure_floor: float
    ) -> None:
        self.failure_floor = failure_floor  # see broker.security.password_login
        self.redis = redis
        self.keys = keys
        self.per_user = per_user
        self.per_ip = per_ip
        self.window = window
        self._start = redis.register_script(_START)
        self._finish = redis.register_script(_FINISH)

    def _user_keys(self, provider_id: str, username: str) -> list[str]:
        base = f"{self.keys.prefix}:{{rl:u:{digest(provider_id + ':' + username.lower())[:32]}}}"
        return [base, f"{base}:inflight"]

    def _ip_keys(self, ip: str) -> list[str]:
        base = f"{self.keys.prefix}:{{rl:ip:{digest(ip)[:32]}}}"
        return [base, f"{base}:inflight"]

    async def _begin(self, keys: list[str], limit: int) -> Verdict:
        deadline = time.monotonic() + WAIT
        while True:
            state, ttl = await self._start(keys=keys, args=[limit, self.window, IN_FLIGHT_TTL])
            if int(state) == 1:
                return Verdict(True)
            if int(state) == 0:
                return Verdict(False, max(int(ttl), 1))
            if time.monotonic() >= deadline:
                return Verdict(False, 1)
            await asyncio.sleep(0.05)

    async def reserve(self, provider_id: str, username: str, ip: str | None) -> Verdict:
        """Start one attempt in the username's and the IP's counts, or say how long the lock
        lasts. Every allowed reservation must be settled."""
        user = self._user_keys(provider_id, username)
        verdict = await self._begin(user, self.per_user)
        if not verdict.allowed or not ip:
            return verdict
        by_ip = await self._begin(self._ip_keys(ip), self.per_ip)
        if not by_ip.allowed:
            await self._finish(keys=user, args=["void", self.window])
        return by_ip

    async def settle(self, provider_id: str, username: str, ip: str | None, outcome: Outcome) -> None:
        user_outcome = {"failed": "failed", "succeeded": "cleared", "void": "void"}[outcome]
        await self._finish(keys=self._user_keys(provider_id, username), args=[user_outcome, self.window])
        if ip:
            ip_outcome = "failed" if outcome == "failed" else "void"
            await self._finish(keys=self._ip_keys(ip), args=[ip_outcome, self.window])
