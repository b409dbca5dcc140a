"""The narrow token store: clients, pending authorization flows, codes, grants, refresh tokens.

Atomicity rules (every backend must keep them; this one does with Lua, one slot per script on
Cluster):

* ``take_code`` spends a code exactly once, and only for the client it was issued to: another
  client's attempt is refused without spending it. A second take reports the replay and the grant.
* ``rotate_refresh`` moves a refresh token from active to rotated exactly once; every other
  caller learns that it lost and gets the stored successor (encrypted under the old token).
  The rotated marker lives as long as the grant (a later reuse is theft); the successor only
  for the reuse grace window, so a grant refreshed every few minutes does not pile up answers.
* A revoked grant stays revoked; nothing it issued refreshes again. No grant is marked revoked
  before it is in the revoked set resource servers load and announced on their channel.
* A grant's lock is freed only by the holder that took it.

Every key carries a TTL, so nothing outlives the lifetime configured for it.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio.cluster import RedisCluster

from broker.metrics import TOKENS_REVOKED
from broker.store.client import RedisClient
from broker.store.keys import Keys

# KEYS: the code, its grant. ARGV: the code's hash, the client presenting it. A code presented by
# another client than its own is refused and left for its owner (not spent: that would make the
# rightful exchange look like a replay).
_TAKE_CODE = """
local code = redis.call('GET', KEYS[1])
if code then
  local c = cjson.decode(code)
  if c.code_hash == ARGV[1] and c.client_id ~= ARGV[2] then return {'wrong_client', ''} end
  redis.call('DEL', KEYS[1])
  return {'ok', code}
end
local grant = redis.call('GET', KEYS[2])
if grant then
  local g = cjson.decode(grant)
  if g.code_hash == ARGV[1] then return {'replayed', grant} end
end
return {'missing', ''}
"""

_ROTATE = """
local grant = redis.call('GET', KEYS[1])
if not grant then return {'nogrant', '', ''} end
local g = cjson.decode(grant)
if g.status ~= 'active' then return {'revoked', '', ''} end
local rt = redis.call('GET', KEYS[2])
if not rt then return {'unknown', '', ''} end
local r = cjson.decode(rt)
if r.state == 'rotated' then return {'rotated', rt, r.successor or redis.call('GET', KEYS[4]) or ''} end
redis.call('SET', KEYS[2], cjson.encode({state='rotated', at=tonumber(ARGV[1])}), 'EX', ARGV[4])
redis.call('SET', KEYS[4], ARGV[2], 'EX', ARGV[7])
redis.call('SET', KEYS[3], '{"state":"active"}', 'EX', ARGV[3])
g.scopes = ARGV[5]
if ARGV[6] ~= '' then g.identity = cjson.decode(ARGV[6]) end
g.last_refresh = tonumber(ARGV[1])
g.refresh_count = (g.refresh_count or 0) + 1
redis.call('SET', KEYS[1], cjson.encode(g), 'KEEPTTL')
return {'ok', '', ''}
"""

_INDEX_GRANT = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
local want = tonumber(ARGV[1]) + 60 - tonumber(redis.call('TIME')[1])
if redis.call('TTL', KEYS[1]) < want then redis.call('EXPIRE', KEYS[1], want) end
"""

# Revocation. ARGV: now, reason, grant id, revocation channel[, expiry of the grant's tokens].
# KEYS[1] the grant: marks it revoked; ``changed`` is 1 if it was not yet, ``expires`` when its
# tokens have all expired (an hour from now for a grant already gone).
_MARK_REVOKED = """
local changed, expires = 0, tonumber(ARGV[1]) + 3600
local grant = redis.call('GET', KEYS[1])
if grant then
  local g = cjson.decode(grant)
  expires = tonumber(g.expires_at) or expires
  if g.status ~= 'revoked' then
    g.status = 'revoked'
    g.revoked_at = tonumber(ARGV[1])
    g.revoked_reason = ARGV[2]
    redis.call('SET', KEYS[1], cjson.encode(g), 'KEEPTTL')
    changed = 1
  end
end
"""
# KEYS[#KEYS] the revoked set: records the grant until ``expires`` (pruning what is past) and
# announces it, in the same step, so the record resource servers reload from and the message
# they hear cannot part.
_ANNOUNCE_REVOKED = """
redis.call('ZREMRANGEBYSCORE', KEYS[#KEYS], '-inf', ARGV[1])
redis.call('ZADD', KEYS[#KEYS], expires, ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[3])
"""
_REVOKE = _MARK_REVOKED + _ANNOUNCE_REVOKED + "return changed"  # one node: all in one script
_REVOKE_MARK = _MARK_REVOKED + "return changed"  # Cluster: the grant's slot ...
_REVOKE_ANNOUNCE = "local expires = tonumber(ARGV[5])" + _ANNOUNCE_REVOKED  # ... and the set's

# KEYS: a flow, its attempt count. Returns the new count, or 0 if the flow has expired.
_COUNT_ATTEMPT = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 then return 0 end
local n = redis.call('INCR', KEYS[2])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) else redis.call('EXPIRE', KEYS[2], 3600) end
return n
"""


# KEYS: a lock. ARGV: its holder's token. Frees the lock only if that holder still has it.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class TakeResult:
    outcome: Literal["ok", "replayed", "missing", "wrong_client"]
    record: dict[str, Any] | None


@dataclass(frozen=True)
class RotateResult:
    outcome: Literal["ok", "rotated", "revoked", "nogrant", "unknown"]
    rotated_at: float = 0.0
    successor: str = ""


class TokenStore:
    def __init__(self, redis: RedisClient, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._take_code = redis.register_script(_TAKE_CODE)
        self._rotate = redis.register_script(_ROTATE)
        self._revoke = redis.register_script(_REVOKE)
        self._revoke_mark = redis.register_script(_REVOKE_MARK)
        self._revoke_announce = redis.register_script(_REVOKE_ANNOUNCE)
        self._unlock = redis.register_script(_UNLOCK)
        self._index_grant = redis.register_script(_INDEX_GRANT)
        self._count_attempt = redis.register_script(_COUNT_ATTEMPT)

    # -- clients ---------------------------------------------------------------------------
    async def save_client(self, client_id: str, record: dict[str, Any], ttl: int) -> None:
        await self.redis.set(self.keys.client(client_id), json.dumps(record), ex=ttl)

    async def get_client(self, client_id: str, *, touch_ttl: int | None = None) -> dict[str, Any] | None:
        key = self.keys.client(client_id)
        raw = await (self.redis.getex(key, ex=touch_ttl) if touch_ttl else self.redis.get(key))
        return json.loads(raw) if raw else None

    # -- pending authorization flows -------------------------------------------------------
    async def save_flow(self, flow_id: str, record: dict[str, Any], ttl: int) -> None:
        await self.redis.set(self.keys.flow(flow_id), json.dumps(record), ex=ttl)

    async def get_flow(self, flow_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(self.keys.flow(flow_id))
        return json.loads(raw) if raw else None

    async def update_flow(self, flow_id: str, record: dict[str, Any]) -> bool:
        """Replace a flow's record, keeping its expiry; False if it has expired meanwhile."""
        return bool(await self.redis.set(self.keys.flow(flow_id), json.dumps(record), keepttl=True, xx=True))

    async def take_flow(self, flow_id: str) -> dict[str, Any] | None:
        raw = await self.redis.getdel(self.keys.flow(flow_id))
        return json.loads(raw) if raw else None

    async def count_flow_attempt(self, flow_id: str) -> int:
        """Count one more failed sign-in on a flow, in one step however many arrive at once: the
        new count, or 0 if the flow has expired. The count lives beside the flow, as long."""
        flow = self.keys.flow(flow_id)
        return int(await self._count_attempt(keys=[flow, f"{flow}:attempts"]))

    # -- codes and grants ------------------------------------------------------------------
    async def save_code(self, grant_id: str, record: dict[str, Any], ttl: int) -> None:
        await self.redis.set(self.keys.code(grant_id), json.dumps(record), ex=ttl)

    async def take_code(self, grant_id: str, code_hash: str, client_id: str) -> TakeResult:
        """Spend the code if ``client_id`` is the client it was issued to ("wrong_client", and the
        code kept, if not)."""
        outcome, raw = await self._take_code(
            keys=[self.keys.code(grant_id), self.keys.grant(grant_id)], args=[code_hash, client_id]
        )
        outcome = _text(outcome)
        record = json.loads(raw) if raw else None
        if outcome == "ok" and record is not None and record.get("code_hash") != code_hash:
            return TakeResult("missing", None)  # right grant id, wrong secret: burn it all the same
        return TakeResult(outcome, record)  # type: ignore[arg-type]

    async def create_grant(self, grant: dict[str, Any], refresh_hash: str, refresh_ttl: int, grant_ttl: int) -> None:
        grant_id = grant["grant_id"]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.grant(grant_id), json.dumps(grant), ex=grant_ttl)
            pipe.set(self.keys.refresh(grant_id, refresh_hash), '{"state":"active"}', ex=refresh_ttl)
            await pipe.execute()
        # The user's index lives as long as their longest grant: a newer, shorter grant (after a
        # lifetime was lowered) must not cut it short and hide older grants from revocation.
        await self._index_grant(
            keys=[self.keys.user_grants(grant["subject"])], args=[int(grant["expires_at"]), grant_id]
        )

    async def get_grant(self, grant_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(self.keys.grant(grant_id))
        return json.loads(raw) if raw else None

    async def get_grant_and_refresh(
        self, grant_id: str, refresh_hash: str
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """Both records in one round trip (one slot, so MGET works on Cluster too)."""
        grant, refresh = await self.redis.mget([self.keys.grant(grant_id), self.keys.refresh(grant_id, refresh_hash)])
        return (json.loads(grant) if grant else None, json.loads(refresh) if refresh else None)

    async def get_successor(self, grant_id: str, refresh_hash: str) -> str | None:
        raw = await self.redis.get(self.keys.successor(grant_id, refresh_hash))
        return _text(raw) if raw else None

    async def get_refresh(self, grant_id: str, refresh_hash: str) -> dict[str, Any] | None:
        raw = await self.redis.get(self.keys.refresh(grant_id, refresh_hash))
        return json.loads(raw) if raw else None

    async def rotate_refresh(
        self,
        grant_id: str,
        old_hash: str,
        new_hash: str,
        *,
        successor: str,
        new_ttl: int,
        rotated_ttl: int,
        successor_ttl: int = 60,
        scopes: str,
        identity: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> RotateResult:
        """Swap the refresh token (once), record the grant's scopes and, when the provider gave
        fresh data (a rotated upstream refresh token, say), the identity, all in one step."""
        now = time.time() if now is None else now
        outcome, raw, kept = await self._rotate(
            keys=[
                self.keys.grant(grant_id),
                self.keys.refresh(grant_id, old_hash),
                self.keys.refresh(grant_id, new_hash),
                self.keys.successor(grant_id, old_hash),
            ],
            args=[
                now,
                successor,
                max(1, new_ttl),
                max(1, rotated_ttl),
                scopes,
                json.dumps(identity) if identity else "",
                max(1, min(successor_ttl, rotated_ttl)),
            ],
        )
        outcome = _text(outcome)
        if outcome == "rotated":
            record = json.loads(raw)
            return RotateResult("rotated", float(record["at"]), _text(kept) if kept else "")
        return RotateResult(outcome)  # type: ignore[arg-type]

    async def lock_grant(self, grant_id: str, seconds: float) -> str | None:
        """A short lock so one refresh at a time asks the upstream provider about a grant: the
        holder's token (for :meth:`unlock_grant`), or None if another holds it."""
        token = secrets.token_urlsafe(16)
        taken = await self.redis.set(self.keys.grant_lock(grant_id), token, nx=True, px=int(seconds * 1000))
        return token if taken else None

    async def unlock_grant(self, grant_id: str, token: str) -> None:
        """Free the lock if ``token``'s holder still has it: a holder slower than its lock's
        expiry must not free the lock another request has taken since."""
        await self._unlock(keys=[self.keys.grant_lock(grant_id)], args=[token])

    async def revoke_grant(self, grant_id: str, reason: str) -> bool:
        """Mark the grant revoked, record it in the revoked set resource servers load, and announce
        it on their channel. True if it was active.

        On one node (standalone or Sentinel) that is one script: no crash falls between the steps.
        On Cluster the grant and the set live in different slots, which no script spans; there the
        record and the announcement (one script in the set's slot) come first and the grant is
        marked after. A crash between them leaves a grant every resource server refuses that the
        broker has not marked yet (the caller saw an error and retries), never a revoked grant that
        resource servers still accept.
        """
        now = time.time()
        args: list[Any] = [now, reason, grant_id, self.keys.revocation_channel()]
        if isinstance(self.redis, RedisCluster):
            grant = await self.get_grant(grant_id)
            expires_at = float(grant["expires_at"]) if grant else now + 3600
            await self._revoke_announce(keys=[self.keys.revoked()], args=[*args, expires_at])
            changed = bool(await self._revoke_mark(keys=[self.keys.grant(grant_id)], args=args))
        else:
            changed = bool(await self._revoke(keys=[self.keys.grant(grant_id), self.keys.revoked()], args=args))
        if changed:
            TOKENS_REVOKED.labels(reason).inc()
        return changed

    async def user_grant_ids(self, subject: str) -> list[str]:
        now = time.time()
        key = self.keys.user_grants(subject)
        await self.redis.zremrangebyscore(key, "-inf", now)
        return [_text(g) for g in await self.redis.zrange(key, 0, -1)]

    async def revoked(self) -> list[str]:
        """Grant ids revoked and not yet expired (what a resource server must refuse)."""
        key = self.keys.revoked()
        await self.redis.zremrangebyscore(key, "-inf", time.time())
        return [_text(g) for g in await self.redis.zrange(key, 0, -1)]

    # -- small JSON records (browser sessions) -----------------------------------------------
    async def set_json(self, key: str, value: dict[str, Any], ttl: int) -> None:
        await self.redis.set(key, json.dumps(value), ex=ttl)

    async def get_json(self, key: str) -> dict[str, Any] | None:
        raw = await self.redis.get(key)
        return json.loads(raw) if raw else None

    # -- remembered consents ---------------------------------------------------------------
    async def remember_consent(self, subject: str, client_id: str, resource: str, scopes: list[str]) -> None:
        key = self.keys.user_consents(subject)
        await self.redis.hset(key, f"{client_id} {resource}", json.dumps({"scopes": scopes, "at": time.time()}))
        await self.redis.expire(key, 400 * 86400)

    async def consents(self, subject: str) -> dict[str, dict[str, Any]]:
        raw = await self.redis.hgetall(self.keys.user_consents(subject))
        return {(k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in raw.items()}

    async def forget_consent(self, subject: str, client_id: str, resource: str) -> bool:
        return bool(await self.redis.hdel(self.keys.user_consents(subject), f"{client_id} {resource}"))
