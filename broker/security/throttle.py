"""Brute-force protection for password sign-in, counted in Redis with a lockout window.

Failures are counted three ways (the model of Keycloak's brute-force detection, temporary
lockout):

* per username **and** client address (the *pair*): the usual lock, at ``per_user`` failures.
  Someone guessing from one address locks the username for that address only, so a stranger
  cannot lock a colleague out of their account from elsewhere;
* per username from every address together (the *account*): a higher limit, ``per_account``,
  that locks the username for every address, so guessing spread over many addresses still
  stops;
* per client address across usernames: ``per_ip``.

A locked username is refused before the directory is asked, whether or not the account exists,
so the lock reveals nothing. A success clears its pair's failures only: the account's count
runs out with its window, so each success of the real user does not hand guessers elsewhere a
fresh allowance. An admin clears a username's counts at once (:meth:`LoginThrottle.unlock`).

Each count also tracks the attempts in flight, and an attempt may start only while failures
plus attempts in flight stay under the limit (one atomic step per slot): parallel guesses
cannot all slip past a check made before any of them failed. An attempt that would exceed it
waits a moment for those in flight to finish (so a user signing in from several clients at once
is not refused) and is refused only if the lock is reached or the wait runs out.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Literal

from redis.commands.core import AsyncScript

from broker.audit import audit
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

# KEYS as above. ARGV: 'failed' | 'void', window.
_FINISH = """
if tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then redis.call('DECR', KEYS[2]) end
if ARGV[1] == 'failed' then
  if redis.call('INCR', KEYS[1]) == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
end
"""

# KEYS: account failures, account in flight, pair failures, pair in flight (one slot: the
# username's hash tag). ARGV: pair limit, account limit, in-flight TTL.
# Returns {1, 0} started, {0, ttl} locked, {2, 0} busy (wait for attempts in flight).
_START_USER = """
local account = tonumber(redis.call('GET', KEYS[1]) or '0')
local pair = tonumber(redis.call('GET', KEYS[3]) or '0')
local ttl = -2
if account >= tonumber(ARGV[2]) then ttl = redis.call('TTL', KEYS[1]) end
if pair >= tonumber(ARGV[1]) then ttl = math.max(ttl, redis.call('TTL', KEYS[3])) end
if ttl ~= -2 then return {0, ttl} end
if account + tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[2])
  or pair + tonumber(redis.call('GET', KEYS[4]) or '0') >= tonumber(ARGV[1]) then
  return {2, 0}
end
for _, key in ipairs({KEYS[2], KEYS[4]}) do
  redis.call('INCR', key)
  redis.call('EXPIRE', key, ARGV[3])
end
return {1, 0}
"""

# KEYS as in _START_USER, then the set of the username's pair digests. ARGV: 'failed' |
# 'cleared' | 'void', window, pair digest, pair limit, account limit.
# Returns {pair lock just reached, account lock just reached}.
_FINISH_USER = """
for _, key in ipairs({KEYS[2], KEYS[4]}) do
  if tonumber(redis.call('GET', key) or '0') > 0 then redis.call('DECR', key) end
end
if ARGV[1] == 'cleared' then
  redis.call('DEL', KEYS[3])
  redis.call('SREM', KEYS[5], ARGV[3])
elseif ARGV[1] == 'failed' then
  local pair = redis.call('INCR', KEYS[3])
  if pair == 1 then redis.call('EXPIRE', KEYS[3], ARGV[2]) end
  local account = redis.call('INCR', KEYS[1])
  if account == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
  redis.call('SADD', KEYS[5], ARGV[3])
  redis.call('EXPIRE', KEYS[5], ARGV[2])
  return {pair == tonumber(ARGV[4]) and 1 or 0, account == tonumber(ARGV[5]) and 1 or 0}
end
return {0, 0}
"""

# KEYS: account failures, the set of pair digests, then the pair counts named in ARGV (one
# digest each, in order). Returns how many counts held failures.
_UNLOCK = """
local cleared = redis.call('DEL', KEYS[1])
for i, pair in ipairs(ARGV) do
  cleared = cleared + redis.call('DEL', KEYS[i + 2])
  redis.call('SREM', KEYS[2], pair)
end
return cleared
"""

Outcome = Literal["failed", "succeeded", "void"]
IN_FLIGHT_TTL = 60  # seconds an attempt counts as in flight if its process dies before settling
WAIT = 5.0  # seconds an attempt waits for others in flight before it is refused
ACCOUNT_FACTOR = 4  # the account limit, when not configured: this many times the pair limit


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int = 0


class LoginThrottle:
    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        *,
        per_user: int,
        per_ip: int,
        window: int,
        failure_floor: float,
        per_account: int | None = None,
    ) -> None:
        self.failure_floor = failure_floor  # see broker.security.password_login
        self.redis = redis
        self.keys = keys
        self.per_user = per_user
        self.per_account = per_account if per_account is not None else ACCOUNT_FACTOR * per_user
        self.per_ip = per_ip
        self.window = window
        self._start = redis.register_script(_START)
        self._finish = redis.register_script(_FINISH)
        self._start_user = redis.register_script(_START_USER)
        self._finish_user = redis.register_script(_FINISH_USER)
        self._unlock = redis.register_script(_UNLOCK)

    def _user_base(self, provider_id: str, username: str) -> str:
        # The account count keeps the key it had before pairs were counted, so counts carry over.
        return f"{self.keys.prefix}:{{rl:u:{digest(provider_id + ':' + username.lower())[:32]}}}"

    @staticmethod
    def _source(ip: str | None) -> str:
        return digest(ip or "")[:32]  # addresses are hashed like every other throttle key

    def _user_keys(self, provider_id: str, username: str, ip: str | None) -> list[str]:
        base = self._user_base(provider_id, username)
        pair = f"{base}:ip:{self._source(ip)}"
        return [base, f"{base}:inflight", pair, f"{pair}:inflight", f"{base}:ips"]

    def _ip_keys(self, ip: str) -> list[str]:
        base = f"{self.keys.prefix}:{{rl:ip:{digest(ip)[:32]}}}"
        return [base, f"{base}:inflight"]

    async def _begin(self, run: AsyncScript, keys: list[str], args: list[int]) -> Verdict:
        deadline = time.monotonic() + WAIT
        while True:
            state, ttl = await run(keys=keys, args=args)
            if int(state) == 1:
                return Verdict(True)
            if int(state) == 0:
                return Verdict(False, max(int(ttl), 1))
            if time.monotonic() >= deadline:
                return Verdict(False, 1)
            await asyncio.sleep(0.05)

    async def reserve(self, provider_id: str, username: str, ip: str | None) -> Verdict:
        """Start one attempt in the username's counts (its pair with this address and the
        account) and the IP's, or say how long the lock lasts. Every allowed reservation must
        be settled."""
        user = self._user_keys(provider_id, username, ip)
        verdict = await self._begin(self._start_user, user[:4], [self.per_user, self.per_account, IN_FLIGHT_TTL])
        if not verdict.allowed or not ip:
            return verdict
        by_ip = await self._begin(self._start, self._ip_keys(ip), [self.per_ip, self.window, IN_FLIGHT_TTL])
        if not by_ip.allowed:
            await self._settle_user(provider_id, username, ip, "void")
        return by_ip

    async def _settle_user(self, provider_id: str, username: str, ip: str | None, outcome: str) -> None:
        pair_locked, account_locked = await self._finish_user(
            keys=self._user_keys(provider_id, username, ip),
            args=[outcome, self.window, self._source(ip), self.per_user, self.per_account],
        )
        for scope, reached in (("pair", pair_locked), ("global", account_locked)):
            if int(reached):
                audit(
                    "account_locked",
                    provider=provider_id,
                    username=username[:256],
                    scope=scope,
                    client_ip=ip if scope == "pair" else None,
                    seconds=self.window,
                )

    async def settle(self, provider_id: str, username: str, ip: str | None, outcome: Outcome) -> None:
        user_outcome = {"failed": "failed", "succeeded": "cleared", "void": "void"}[outcome]
        await self._settle_user(provider_id, username, ip, user_outcome)
        if ip:
            ip_outcome = "failed" if outcome == "failed" else "void"
            await self._finish(keys=self._ip_keys(ip), args=[ip_outcome, self.window])

    async def unlock(self, provider_id: str, username: str) -> bool:
        """Clear a username's failures, for every address and for the account (attempts in
        flight settle as usual). True if there were any."""
        base = self._user_base(provider_id, username)
        # The set names the pairs to clear (every key a script touches is named, for Cluster);
        # a pair that fails between the two steps stays counted, as it would a moment later.
        pairs = sorted(p.decode() if isinstance(p, bytes) else str(p) for p in await self.redis.smembers(f"{base}:ips"))
        keys = [base, f"{base}:ips", *(f"{base}:ip:{pair}" for pair in pairs)]
        return bool(await self._unlock(keys=keys, args=pairs))
