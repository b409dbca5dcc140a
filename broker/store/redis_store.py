"""The Redis store: the one implementation of :class:`broker.store.base.Store`, and the only
module that names Redis keys (through :mod:`broker.store.keys`) or runs Lua.

Atomicity rules (stated per method on the protocol; this backend keeps them with Lua, one slot per
script on Cluster):

* ``take_code`` spends a code exactly once, and only for the client it was issued to: another
  client's attempt is refused without spending it. A second take reports the replay and the grant.
* ``rotate_refresh`` moves a refresh token from active to rotated exactly once; every other
  caller learns that it lost and gets the stored successor (encrypted under the old token).
  The rotated marker lives as long as the grant (a later reuse is theft); the successor only
  for the reuse grace window, so a grant refreshed every few minutes does not pile up answers.
* A revoked grant stays revoked; nothing it issued refreshes again. No grant is marked revoked
  before it is in the revoked set resource servers load and announced on their channel.
* A grant's lock is freed only by the holder that took it.
* A user's re-check answer is claimed (the answer, else the lookup lock) in one step, and kept
  only by the lock's holder; a forgotten answer's lookup in progress keeps nothing.

Every key carries a TTL, so nothing outlives the lifetime configured for it.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar, get_args

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from broker.metrics import TOKENS_REVOKED
from broker.store import throttle_scripts
from broker.store.base import (
    AttemptStart,
    Hit,
    LocksReached,
    LoginOutcome,
    NarrowOutcome,
    RecheckClaim,
    RotateOutcome,
    RotateResult,
    Store,
    TakeOutcome,
    TakeResult,
)
from broker.store.batches import CommandBatches
from broker.store.client import RedisClient
from broker.store.keys import Keys, digest
from broker.store.records import (
    AuthorizationCode,
    BrowserSession,
    ClientRegistration,
    Consent,
    Grant,
    PendingFlow,
    RefreshToken,
    StoredIdentity,
    dumps,
    loads,
)

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

# A SCIM resource's old index entries (KEYS[3][ARGV[1]]) dropped from the index (KEYS[2]) where it
# still holds them; shared by the save and delete scripts.
_SCIM_UNINDEX = """
local old = redis.call('HGET', KEYS[3], ARGV[1])
if old then
  for _, entry in ipairs(cjson.decode(old)) do
    if redis.call('HGET', KEYS[2], entry) == ARGV[1] then redis.call('HDEL', KEYS[2], entry) end
  end
end
"""

# SCIM resources of one tenant and kind. KEYS: the resources, the index, each resource's entries
# (one slot). ARGV: id, record, '1' to create, the entries as a JSON array, the record the change
# was made from ('' for none). Uniqueness, existence, staleness and the swap of the old entries for
# the new are one step.
_SCIM_SAVE = (
    """
local exists = redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1
if ARGV[3] == '1' and exists then return 'conflict' end
if ARGV[3] ~= '1' and not exists then return 'missing' end
if ARGV[5] ~= '' and redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[5] then return 'stale' end
local entries = cjson.decode(ARGV[4])
for _, entry in ipairs(entries) do
  local holder = redis.call('HGET', KEYS[2], entry)
  if holder and holder ~= ARGV[1] then return 'conflict' end
end
"""
    + _SCIM_UNINDEX
    + """for _, entry in ipairs(entries) do redis.call('HSET', KEYS[2], entry, ARGV[1]) end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 'ok'
"""
)

_SCIM_DELETE = (
    """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
"""
    + _SCIM_UNINDEX
    + """redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"""
)

# KEYS: the grant, the old token, the new token, the old token's successor, the grant's last
# refresh (Keys.grant_last_refresh). ARGV: now, the successor, the new token's ttl, the rotated marker's
# (the grant's remaining lifetime), scopes, identity JSON ('' to keep), the successor's ttl, epoch.
# The grant record is re-encoded and written only when its scopes or identity change (a re-check
# that looked up, a narrowed refresh): most refreshes change only the last refresh, which is kept
# in a key of its own (a number) that readers fold into the record (_with_last_refresh).
_ROTATE = """
local grant = redis.call('GET', KEYS[1])
if not grant then return {'nogrant', '', ''} end
local g = cjson.decode(grant)
if g.status ~= 'active' then return {'revoked', '', ''} end
local rt = redis.call('GET', KEYS[2])
if not rt then return {'unknown', '', ''} end
local r = cjson.decode(rt)
if r.state == 'rotated' then return {'rotated', rt, r.successor or redis.call('GET', KEYS[4]) or ''} end
if (tonumber(g.epoch) or 0) ~= tonumber(ARGV[8]) then return {'stale', '', ''} end
redis.call('SET', KEYS[2], cjson.encode({state='rotated', at=tonumber(ARGV[1])}), 'EX', ARGV[4])
redis.call('SET', KEYS[4], ARGV[2], 'EX', ARGV[7])
redis.call('SET', KEYS[3], '{"state":"active"}', 'EX', ARGV[3])
if g.scopes ~= ARGV[5] or ARGV[6] ~= '' then
  g.scopes = ARGV[5]
  if ARGV[6] ~= '' then g.identity = cjson.decode(ARGV[6]) end
  g.last_refresh = tonumber(ARGV[1])
  redis.call('SET', KEYS[1], cjson.encode(g), 'KEEPTTL')
end
redis.call('SET', KEYS[5], ARGV[1], 'EX', ARGV[4])
return {'ok', '', ''}
"""

_INDEX_GRANT = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
local want = tonumber(ARGV[1]) + 60 - tonumber(redis.call('TIME')[1])
if redis.call('TTL', KEYS[1]) < want then redis.call('EXPIRE', KEYS[1], want) end
"""

# A new grant on one node (standalone or Sentinel), one round trip instead of three. KEYS: the
# grant, its first refresh token, then the indexes (user, username, upstream session). ARGV:
# the grant, its ttl, the token's record, its ttl, the grant's expiry, its id.
_CREATE_GRANT = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
local now = tonumber(redis.call('TIME')[1])
for i = 3, #KEYS do
  redis.call('ZADD', KEYS[i], ARGV[5], ARGV[6])
  local want = tonumber(ARGV[5]) + 60 - now
  if redis.call('TTL', KEYS[i]) < want then redis.call('EXPIRE', KEYS[i], want) end
end
"""

# The end of a sign-in, on one node (three slots): the flow spent and, only if this call spent it,
# its code stored and the consent remembered. KEYS: the flow, the code, the user's consents. ARGV:
# the code's record, its ttl, the consent's field, the consent, the hash's ttl. 1 if spent here.
_SPEND_FLOW = """
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[3], ARGV[5])
return 1
"""
CONSENT_TTL = 400 * 86400  # a user's remembered consents, from the last one given

# KEYS: a user's consents. ARGV: the field, the consent, the hash's ttl. One round trip.
_REMEMBER_CONSENT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
"""

# Revocation. ARGV: now, reason (not stored: nothing read it), grant id, revocation channel[, expiry of
# the grant's tokens].
# KEYS[1] the grant: marks it revoked; ``changed`` is 1 if it was not yet, ``expires`` when its
# tokens have all expired (an hour from now for a grant already gone), ``handle`` what its tokens
# of the current epoch carry as sid (Grant.token_handle).
# KEYS[2] the grant's vault: dropped, with the sealed provider-private part of its identity
# (upstream tokens), so nothing of the user's upstream session outlives the grant.
# KEYS[3] the grant's cached downstream tokens: dropped alike.
_MARK_REVOKED = """
local changed, expires, handle = 0, tonumber(ARGV[1]) + 3600, ARGV[3]
local grant = redis.call('GET', KEYS[1])
redis.call('DEL', KEYS[2], KEYS[3])
if grant then
  local g = cjson.decode(grant)
  expires = tonumber(g.expires_at) or expires
  if (tonumber(g.epoch) or 0) > 0 then handle = ARGV[3] .. '.' .. g.epoch end
  if g.status ~= 'revoked' then
    g.status = 'revoked'
    g.revoked_at = tonumber(ARGV[1])
    if type(g.identity) == 'table' then g.identity.private = cjson.null end
    redis.call('SET', KEYS[1], cjson.encode(g), 'KEEPTTL')
    changed = 1
  end
end
"""
# KEYS[#KEYS] the revoked set: records the handle until ``expires`` (pruning what is past) and
# announces it, in the same step, so the record resource servers reload from and the message
# they hear cannot part.
_ANNOUNCE_REVOKED = """
redis.call('ZREMRANGEBYSCORE', KEYS[#KEYS], '-inf', ARGV[1])
redis.call('ZADD', KEYS[#KEYS], expires, handle)
redis.call('PUBLISH', ARGV[4], handle)
"""
_REVOKE = _MARK_REVOKED + _ANNOUNCE_REVOKED + "return changed"  # one node: all in one script
_REVOKE_MARK = _MARK_REVOKED + "return changed"  # Cluster: the grant's slot ...
# ... and the set's, where ARGV[3] is the handle itself and ARGV[5] its tokens' expiry
_REVOKE_ANNOUNCE = "local expires, handle = tonumber(ARGV[5]), ARGV[3]" + _ANNOUNCE_REVOKED

# Narrowing a grant in place. KEYS: the grant, its cached downstream tokens[, the revoked set].
# ARGV: now, the scopes, the epoch the caller read, the revocation channel, the expiry of the old
# handle's tokens, the grant id. The epoch moves on (the grant's tokens get a new handle) and the
# old handle is ended like a revoked grant's, in the same step on one node. 'ok', 'stale' (the
# epoch moved meanwhile: nothing written) or 'inactive'.
_NARROW_CHECK = """
local grant = redis.call('GET', KEYS[1])
if not grant then return 'inactive' end
local g = cjson.decode(grant)
if g.status ~= 'active' then return 'inactive' end
local epoch = tonumber(g.epoch) or 0
if epoch ~= tonumber(ARGV[3]) then return 'stale' end
local expires, handle = tonumber(ARGV[5]), ARGV[6]
if epoch > 0 then handle = ARGV[6] .. '.' .. epoch end
"""
_NARROW_MARK = """
redis.call('DEL', KEYS[2])
g.scopes = ARGV[2]
g.epoch = epoch + 1
redis.call('SET', KEYS[1], cjson.encode(g), 'KEEPTTL')
return 'ok'
"""
_NARROW = _NARROW_CHECK + _ANNOUNCE_REVOKED + _NARROW_MARK  # one node: all in one script
_NARROW_CLUSTER = _NARROW_CHECK + _NARROW_MARK  # Cluster: the grant's slot, after the announcement

# KEYS: a grant, its vault. ARGV: the sealed entry, milliseconds. Kept only for an active grant,
# never past the grant's own expiry. Returns 1 if kept.
_PUT_UPSTREAM = """
local grant = redis.call('GET', KEYS[1])
if not grant or cjson.decode(grant).status ~= 'active' then return 0 end
local ms, left = tonumber(ARGV[2]), redis.call('PTTL', KEYS[1])
if left > 0 and left < ms then ms = left end
redis.call('SET', KEYS[2], ARGV[1], 'PX', math.max(1, ms))
return 1
"""

# KEYS: a grant, its downstream-token hash. ARGV: the slot, the sealed entry, milliseconds. Kept
# only for an active grant; the hash lives as long as its longest entry, never past the grant.
# Returns 1 if kept.
_PUT_DOWNSTREAM = """
local grant = redis.call('GET', KEYS[1])
if not grant or cjson.decode(grant).status ~= 'active' then return 0 end
local ms, left = tonumber(ARGV[3]), redis.call('PTTL', KEYS[1])
if left > 0 and left < ms then ms = left end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if redis.call('PTTL', KEYS[2]) < ms then redis.call('PEXPIRE', KEYS[2], math.max(1, ms)) end
return 1
"""

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

# KEYS: a user's re-check answer (a hash: at, identity), its lookup lock. ARGV: not_before, lock
# milliseconds, a new holder token. {identity, checked_at, ms left, ''}, or {'', 0, 0, token} when
# this caller took the lock, or {'', 0, 0, ''} when another holds it.
_CLAIM_RECHECK = """
local kept = redis.call('HMGET', KEYS[1], 'at', 'identity')
if kept[1] and kept[2] and tonumber(kept[1]) >= tonumber(ARGV[1]) then
  return {kept[2], kept[1], redis.call('PTTL', KEYS[1]), ''}
end
if redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[2]) then return {'', '0', 0, ARGV[3]} end
return {'', '0', 0, ''}
"""

# KEYS: the answer, the lock. ARGV: holder token ('' for none), identity JSON ('': no good answer),
# checked_at, milliseconds to keep it. Keeps the answer only for the lock's holder; always frees
# the holder's lock. Returns 1 if kept.
_FINISH_RECHECK = """
local mine = ARGV[1] ~= '' and redis.call('GET', KEYS[2]) == ARGV[1]
local kept = 0
if ARGV[2] == '' or mine then redis.call('DEL', KEYS[1]) end
if ARGV[2] ~= '' and mine then
  redis.call('HSET', KEYS[1], 'at', ARGV[3], 'identity', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  kept = 1
end
if mine then redis.call('DEL', KEYS[2]) end
return kept
"""


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_Word = TypeVar("_Word", bound=str)


def _outcome(value: object, allowed: Sequence[_Word]) -> _Word:
    """A script's outcome word, checked against the words it may return."""
    text = _text(value)
    for word in allowed:
        if word == text:
            return word
    raise ValueError(f"unexpected store script outcome {text!r}")


def _pair(reply: object) -> tuple[int, int]:
    """A script's ``{a, b}`` integer reply."""
    if not isinstance(reply, list | tuple) or len(reply) != 2:
        raise ValueError(f"unexpected store script reply {reply!r}")
    return int(reply[0]), int(reply[1])


def _with_last_refresh(record: dict[str, Any] | None, last: object) -> dict[str, Any] | None:
    """A grant record with its last refresh from its own key, when that one is later (a record
    the rotation left as it was, or written by a broker before the key)."""
    if record is None or last is None:
        return record
    when = float(_text(last))
    if when > float(record.get("last_refresh") or 0.0):
        record["last_refresh"] = when
    return record


_TAKE_OUTCOMES: tuple[TakeOutcome, ...] = get_args(TakeOutcome)
_ROTATE_OUTCOMES: tuple[RotateOutcome, ...] = get_args(RotateOutcome)
_ATTEMPT_STATES: dict[int, Literal["started", "locked", "busy"]] = {1: "started", 0: "locked", 2: "busy"}


def _attempt(reply: object) -> AttemptStart:
    state, ttl = _pair(reply)
    return AttemptStart(_ATTEMPT_STATES[state], max(ttl, 1) if state == 0 else 0)


class _OneNodeScript(AsyncScript):
    """A Lua script on one node (standalone, or Sentinel's master), called as redis-py's
    ``AsyncScript`` is (``await script(keys=..., args=...)``) by a shorter path: ``EVALSHA`` through
    :class:`broker.store.batches.CommandBatches`, which writes the scripts of the requests of one
    event-loop turn together on one pooled connection and reads their replies back (what a loaded
    worker spends most on per refresh grant is one write, wake-up and read per request). Left out
    of the way ``Redis.execute_command`` goes, and doing nothing here: its retry wrapper (only a
    client that retries nothing takes this path), its OpenTelemetry recorders (none is configured)
    and the deprecation wrapper's argument filtering. Kept: the connection's health check, the
    deadline (``socket_timeout``), a failed connection dropped (nothing retried), and a script
    Redis does not know (restarted, failed over) loaded and run again."""

    def __init__(self, script: AsyncScript, redis: Redis, batches: CommandBatches) -> None:
        super().__init__(redis, script.script)
        self._batches = batches

    async def __call__(
        self,
        keys: Sequence[Any] | None = None,
        args: Iterable[Any] | None = None,
        client: Any = None,
    ) -> Any:
        if client is not None:
            return await super().__call__(keys, args, client)
        keys, args = keys or (), args or ()
        try:
            return await self._batches.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await super().__call__(keys, args)  # loaded and run again


def _retries_nothing(redis: Redis) -> bool:
    """Whether ``redis``'s connections retry nothing (redis-py's default; ``create_redis``'s)."""
    options = redis.connection_pool.connection_kwargs
    retry = options.get("retry")
    return (
        (retry is None or not retry.get_retries())
        and not options.get("retry_on_timeout")
        and not options.get("retry_on_error")
    )


class RedisStore:
    """:class:`broker.store.base.Store` on Redis: standalone, Sentinel or Cluster."""

    def __init__(self, redis: RedisClient, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._take_code = redis.register_script(_TAKE_CODE)
        self._rotate = redis.register_script(_ROTATE)
        self._revoke = redis.register_script(_REVOKE)
        self._revoke_mark = redis.register_script(_REVOKE_MARK)
        self._revoke_announce = redis.register_script(_REVOKE_ANNOUNCE)
        self._narrow = redis.register_script(_NARROW)
        self._narrow_cluster = redis.register_script(_NARROW_CLUSTER)
        self._put_upstream = redis.register_script(_PUT_UPSTREAM)
        self._put_downstream = redis.register_script(_PUT_DOWNSTREAM)
        self._unlock = redis.register_script(_UNLOCK)
        self._index_grant = redis.register_script(_INDEX_GRANT)
        self._create_grant = redis.register_script(_CREATE_GRANT)
        self._remember_consent = redis.register_script(_REMEMBER_CONSENT)
        self._spend_flow = redis.register_script(_SPEND_FLOW)
        self._count_attempt = redis.register_script(_COUNT_ATTEMPT)
        self._scim_save = redis.register_script(_SCIM_SAVE)
        self._scim_delete = redis.register_script(_SCIM_DELETE)
        self._start_address = redis.register_script(throttle_scripts.START)
        self._finish_address = redis.register_script(throttle_scripts.FINISH)
        self._start_user = redis.register_script(throttle_scripts.START_USER)
        self._finish_user = redis.register_script(throttle_scripts.FINISH_USER)
        self._start_attempt = redis.register_script(throttle_scripts.START_ATTEMPT)
        self._finish_attempt = redis.register_script(throttle_scripts.FINISH_ATTEMPT)
        self._clear_user = redis.register_script(throttle_scripts.UNLOCK)
        self._hit = redis.register_script(throttle_scripts.HIT)
        self._claim_recheck = redis.register_script(_CLAIM_RECHECK)
        self._finish_recheck = redis.register_script(_FINISH_RECHECK)
        self._batches: CommandBatches | None = None
        if isinstance(redis, Redis) and not redis.single_connection_client and _retries_nothing(redis):
            # A refresh grant's scripts by the shorter path (one node; Cluster routes by slot).
            self._batches = batches = CommandBatches(redis.connection_pool)
            self._rotate = _OneNodeScript(self._rotate, redis, batches)
            self._claim_recheck = _OneNodeScript(self._claim_recheck, redis, batches)
            self._finish_recheck = _OneNodeScript(self._finish_recheck, redis, batches)
            self._unlock = _OneNodeScript(self._unlock, redis, batches)
            # A sign-in's scripts too: throttle start and finish, the flow spent, the code taken, the grant.
            self._start_attempt = _OneNodeScript(self._start_attempt, redis, batches)
            self._finish_attempt = _OneNodeScript(self._finish_attempt, redis, batches)
            self._spend_flow = _OneNodeScript(self._spend_flow, redis, batches)
            self._take_code = _OneNodeScript(self._take_code, redis, batches)
            self._create_grant = _OneNodeScript(self._create_grant, redis, batches)

    # The sign-in path's plain reads and writes (flows, codes, sessions, client records): by the
    # same shorter path as the scripts above when there is one, else redis-py's.
    async def _get(self, key: str) -> Any:
        if self._batches is None:
            return await self.redis.get(key)
        return await self._batches.execute("GET", key)

    async def _set_ex(self, key: str, value: str, ttl: int) -> None:
        if self._batches is None:
            await self.redis.set(key, value, ex=ttl)
        else:
            await self._batches.execute("SET", key, value, "EX", ttl)

    # -- clients ---------------------------------------------------------------------------
    async def save_client(self, client: ClientRegistration, ttl: int) -> None:
        await self._set_ex(self.keys.client(client.client_id), dumps(client.to_json()), ttl)

    async def get_client(self, client_id: str, *, touch_ttl: int | None = None) -> ClientRegistration | None:
        key = self.keys.client(client_id)
        record = loads(await (self.redis.getex(key, ex=touch_ttl) if touch_ttl else self._get(key)))
        return ClientRegistration.from_json(record) if record is not None else None

    # -- pending authorization flows -------------------------------------------------------
    async def save_flow(self, flow_id: str, flow: PendingFlow, ttl: int) -> None:
        await self._set_ex(self.keys.flow(flow_id), dumps(flow.to_json()), ttl)

    async def get_flow(self, flow_id: str) -> PendingFlow | None:
        record = loads(await self._get(self.keys.flow(flow_id)))
        return PendingFlow.from_json(record) if record is not None else None

    async def update_flow(self, flow_id: str, flow: PendingFlow) -> bool:
        key = self.keys.flow(flow_id)
        if self._batches is None:
            return bool(await self.redis.set(key, dumps(flow.to_json()), keepttl=True, xx=True))
        return await self._batches.execute("SET", key, dumps(flow.to_json()), "KEEPTTL", "XX") is not None

    async def take_flow(self, flow_id: str) -> PendingFlow | None:
        record = loads(await self.redis.getdel(self.keys.flow(flow_id)))
        return PendingFlow.from_json(record) if record is not None else None

    async def spend_flow(
        self, flow_id: str, *, grant_id: str, code: AuthorizationCode, code_ttl: int, subject: str, consent: Consent
    ) -> bool:
        flow_key, code_key = self.keys.flow(flow_id), self.keys.code(grant_id)
        consents, code_record = self.keys.user_consents(subject), dumps(code.to_json())
        consent_args: list[str | int] = [consent.hash_field, dumps(consent.to_json()), CONSENT_TTL]
        if not isinstance(self.redis, RedisCluster):  # one node: all of it in one script
            return bool(
                await self._spend_flow(keys=[flow_key, code_key, consents], args=[code_record, code_ttl, *consent_args])
            )
        # Cluster: three slots, one step each; the flow is spent first, so only its spender stores a code.
        if not await self.redis.delete(flow_key):
            return False
        await self.redis.set(code_key, code_record, ex=code_ttl)
        await self._remember_consent(keys=[consents], args=consent_args)
        return True

    async def count_flow_attempt(self, flow_id: str) -> int:
        flow = self.keys.flow(flow_id)
        return int(await self._count_attempt(keys=[flow, f"{flow}:attempts"]))

    def _pointer(self, upstream_state: str) -> str:
        # A flow-shaped key (``up.<hash>``) holding ``{"flow_id": ...}``, as it always has.
        return self.keys.flow(f"up.{digest(upstream_state)}")

    async def save_upstream_pointer(self, upstream_state: str, flow_id: str, ttl: int) -> None:
        await self.redis.set(self._pointer(upstream_state), dumps({"flow_id": flow_id}), ex=ttl)

    async def get_upstream_pointer(self, upstream_state: str) -> str | None:
        record = loads(await self.redis.get(self._pointer(upstream_state)))
        return _text(record["flow_id"]) if record and "flow_id" in record else None

    async def take_upstream_pointer(self, upstream_state: str) -> str | None:
        record = loads(await self.redis.getdel(self._pointer(upstream_state)))
        return _text(record["flow_id"]) if record and "flow_id" in record else None

    # -- codes and grants ------------------------------------------------------------------
    async def save_code(self, grant_id: str, code: AuthorizationCode, ttl: int) -> None:
        await self._set_ex(self.keys.code(grant_id), dumps(code.to_json()), ttl)

    async def take_code(self, grant_id: str, code_hash: str, client_id: str) -> TakeResult:
        word, raw = await self._take_code(
            keys=[self.keys.code(grant_id), self.keys.grant(grant_id)], args=[code_hash, client_id]
        )
        outcome = _outcome(word, _TAKE_OUTCOMES)
        if outcome != "ok":
            return TakeResult(outcome)
        record = loads(raw)
        if record is None or record.get("code_hash") != code_hash:
            return TakeResult("missing")  # right grant id, wrong secret: burn it all the same
        return TakeResult("ok", AuthorizationCode.from_json(record))

    async def create_grant(self, grant: Grant, refresh_hash: str, refresh_ttl: int, grant_ttl: int) -> None:
        # The user's index lives as long as their longest grant: a newer, shorter grant (after a
        # lifetime was lowered) must not cut it short and hide older grants from revocation.
        provider_id = grant.identity.provider_id if grant.identity else grant.provider_id
        by = [self.keys.user_grants(grant.subject)]
        if grant.username:
            by.append(self.keys.username_grants(provider_id, grant.username))
        if grant.identity is not None and grant.identity.upstream_session:
            by.append(self.keys.session_grants(provider_id, grant.identity.upstream_session))
        record, grant_key = dumps(grant.to_json()), self.keys.grant(grant.grant_id)
        refresh_key = self.keys.refresh(grant.grant_id, refresh_hash)
        if not isinstance(self.redis, RedisCluster):  # one node: all of it in one script
            await self._create_grant(
                keys=[grant_key, refresh_key, *by],
                args=[record, grant_ttl, RefreshToken.ACTIVE_JSON, refresh_ttl, int(grant.expires_at), grant.grant_id],
            )
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(grant_key, record, ex=grant_ttl)
            pipe.set(refresh_key, RefreshToken.ACTIVE_JSON, ex=refresh_ttl)
            await pipe.execute()
        for key in by:  # separate slots: one script each
            await self._index_grant(keys=[key], args=[int(grant.expires_at), grant.grant_id])

    async def get_grant(self, grant_id: str) -> Grant | None:
        grant, last = await self.redis.mget(
            [self.keys.grant(grant_id), self.keys.grant_last_refresh(grant_id)]  # one slot
        )
        record = _with_last_refresh(loads(grant), last)
        return Grant.from_json(record) if record is not None else None

    async def get_grant_and_refresh(self, grant_id: str, refresh_hash: str) -> tuple[Grant | None, RefreshToken | None]:
        # One slot, so MGET works on Cluster too.
        grant, last, refresh = await self.redis.mget(
            [
                self.keys.grant(grant_id),
                self.keys.grant_last_refresh(grant_id),
                self.keys.refresh(grant_id, refresh_hash),
            ]
        )
        grant_record, refresh_record = _with_last_refresh(loads(grant), last), loads(refresh)
        return (
            Grant.from_json(grant_record) if grant_record is not None else None,
            RefreshToken.from_json(refresh_record) if refresh_record is not None else None,
        )

    async def get_successor(self, grant_id: str, refresh_hash: str) -> str | None:
        raw = await self.redis.get(self.keys.successor(grant_id, refresh_hash))
        return _text(raw) if raw else None

    async def get_refresh(self, grant_id: str, refresh_hash: str) -> RefreshToken | None:
        record = loads(await self.redis.get(self.keys.refresh(grant_id, refresh_hash)))
        return RefreshToken.from_json(record) if record is not None else None

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
        identity: StoredIdentity | None = None,
        now: float | None = None,
        epoch: int = 0,
    ) -> RotateResult:
        now = time.time() if now is None else now
        word, raw, kept = await self._rotate(
            keys=[
                self.keys.grant(grant_id),
                self.keys.refresh(grant_id, old_hash),
                self.keys.refresh(grant_id, new_hash),
                self.keys.successor(grant_id, old_hash),
                self.keys.grant_last_refresh(grant_id),
            ],
            args=[
                now,
                successor,
                max(1, new_ttl),
                max(1, rotated_ttl),
                scopes,
                dumps(identity.to_json()) if identity is not None else "",
                max(1, min(successor_ttl, rotated_ttl)),
                epoch,
            ],
        )
        outcome = _outcome(word, _ROTATE_OUTCOMES)
        if outcome == "rotated":
            record = RefreshToken.from_json(loads(raw) or {})
            return RotateResult("rotated", record.rotated_at, _text(kept) if kept else "")
        return RotateResult(outcome)

    async def lock_grant(self, grant_id: str, seconds: float) -> str | None:
        token = secrets.token_urlsafe(16)
        taken = await self.redis.set(self.keys.grant_lock(grant_id), token, nx=True, px=int(seconds * 1000))
        return token if taken else None

    async def unlock_grant(self, grant_id: str, token: str) -> None:
        await self._unlock(keys=[self.keys.grant_lock(grant_id)], args=[token])

    async def revoke_grant(self, grant_id: str, reason: str) -> bool:
        """On one node (standalone or Sentinel) that is one script: no crash falls between the steps.
        On Cluster the grant and the set live in different slots, which no script spans; there the
        record and the announcement (one script in the set's slot) come first and the grant is
        marked after. A crash between them leaves a grant every resource server refuses that the
        broker has not marked yet (the caller saw an error and retries), never a revoked grant that
        resource servers still accept.
        """
        now = time.time()
        args: list[str | float] = [now, reason, grant_id, self.keys.revocation_channel()]
        if isinstance(self.redis, RedisCluster):
            grant = await self.get_grant(grant_id)
            expires_at = grant.expires_at if grant else now + 3600
            announced = grant.token_handle if grant else grant_id
            await self._revoke_announce(keys=[self.keys.revoked()], args=[now, reason, announced, args[3], expires_at])
            grant_keys = [
                self.keys.grant(grant_id),
                self.keys.upstream_tokens(grant_id),
                self.keys.downstream_tokens(grant_id),
            ]
            changed = bool(await self._revoke_mark(keys=grant_keys, args=args))
            after = await self.get_grant(grant_id)
            if after is not None and after.token_handle != announced:  # narrowed in between
                await self._revoke_announce(
                    keys=[self.keys.revoked()], args=[now, reason, after.token_handle, args[3], expires_at]
                )
        else:
            keys = [
                self.keys.grant(grant_id),
                self.keys.upstream_tokens(grant_id),
                self.keys.downstream_tokens(grant_id),
                self.keys.revoked(),
            ]
            changed = bool(await self._revoke(keys=keys, args=args))
        if changed:
            TOKENS_REVOKED.labels(reason).inc()
        return changed

    async def narrow_grant(
        self, grant_id: str, scopes: str, *, epoch: int, tokens_expire_at: float, reason: str
    ) -> NarrowOutcome:
        """One script on one node. On Cluster the old handle is recorded and announced first (in the
        set's slot), then the grant narrowed if still at ``epoch``: a crash between them leaves
        tokens refused that the grant would still issue (the caller saw an error and retries), never
        a narrowed grant whose wider tokens are still accepted."""
        now = time.time()
        args: list[str | float] = [now, scopes, epoch, self.keys.revocation_channel(), tokens_expire_at, grant_id]
        grant_keys = [self.keys.grant(grant_id), self.keys.downstream_tokens(grant_id)]
        if isinstance(self.redis, RedisCluster):
            grant = await self.get_grant(grant_id)
            if grant is None or not grant.active:
                return "inactive"
            if grant.epoch != epoch:
                return "stale"
            await self._revoke_announce(
                keys=[self.keys.revoked()], args=[now, reason, grant.token_handle, args[3], tokens_expire_at]
            )
            outcome = _text(await self._narrow_cluster(keys=grant_keys, args=args))
        else:
            outcome = _text(await self._narrow(keys=[*grant_keys, self.keys.revoked()], args=args))
        if outcome == "ok":
            TOKENS_REVOKED.labels(reason).inc()
            return "ok"
        return "stale" if outcome == "stale" else "inactive"

    async def put_upstream_tokens(self, grant_id: str, sealed: str, ttl: float) -> bool:
        keys = [self.keys.grant(grant_id), self.keys.upstream_tokens(grant_id)]
        return bool(await self._put_upstream(keys=keys, args=[sealed, max(1, int(ttl * 1000))]))

    async def get_upstream_tokens(self, grant_id: str) -> str | None:
        value = await self.redis.get(self.keys.upstream_tokens(grant_id))
        return _text(value) if value is not None else None

    async def put_downstream_token(self, grant_id: str, slot: str, sealed: str, ttl: float) -> bool:
        keys = [self.keys.grant(grant_id), self.keys.downstream_tokens(grant_id)]
        return bool(await self._put_downstream(keys=keys, args=[slot, sealed, max(1, int(ttl * 1000))]))

    async def get_downstream_token(self, grant_id: str, slot: str) -> str | None:
        value = await self.redis.hget(self.keys.downstream_tokens(grant_id), slot)
        return _text(value) if value is not None else None

    async def user_grant_ids(self, subject: str) -> list[str]:
        key = self.keys.user_grants(subject)
        await self.redis.zremrangebyscore(key, "-inf", time.time())
        return [_text(g) for g in await self.redis.zrange(key, 0, -1)]

    async def username_grant_ids(self, provider_id: str, username: str) -> list[str]:
        return await self._indexed(self.keys.username_grants(provider_id, username))

    async def session_grant_ids(self, provider_id: str, session: str) -> list[str]:
        return await self._indexed(self.keys.session_grants(provider_id, session))

    async def _indexed(self, key: str) -> list[str]:
        await self.redis.zremrangebyscore(key, "-inf", time.time())
        return [_text(g) for g in await self.redis.zrange(key, 0, -1)]

    async def revoked(self) -> list[str]:
        key = self.keys.revoked()
        await self.redis.zremrangebyscore(key, "-inf", time.time())
        return [_text(g) for g in await self.redis.zrange(key, 0, -1)]

    # -- browser sessions ------------------------------------------------------------------
    def _session(self, token: str) -> str:
        return f"{self.keys.prefix}:{{s:{digest(token)[:40]}}}"

    async def save_session(self, token: str, session: BrowserSession, ttl: int) -> None:
        await self._set_ex(self._session(token), dumps(session.to_json()), ttl)

    async def get_session(self, token: str) -> BrowserSession | None:
        record = loads(await self._get(self._session(token)))
        return BrowserSession.from_json(record) if record is not None else None

    async def end_session(self, token: str) -> None:
        await self.redis.delete(self._session(token))

    # -- remembered consents ---------------------------------------------------------------
    async def remember_consent(self, subject: str, client_id: str, resource: str, scopes: list[str]) -> None:
        key = self.keys.user_consents(subject)
        consent = Consent(client_id, resource, tuple(scopes), time.time())
        await self._remember_consent(keys=[key], args=[consent.hash_field, dumps(consent.to_json()), CONSENT_TTL])

    async def consents(self, subject: str) -> list[Consent]:
        raw = await self.redis.hgetall(self.keys.user_consents(subject))
        found = [Consent.from_json(_text(k), loads(v) or {}) for k, v in raw.items()]
        return sorted(found, key=lambda c: c.hash_field)

    async def forget_consent(self, subject: str, client_id: str, resource: str) -> bool:
        return bool(await self.redis.hdel(self.keys.user_consents(subject), f"{client_id} {resource}"))

    # -- sign-in throttling ----------------------------------------------------------------
    def _user_base(self, provider_id: str, username: str) -> str:
        # The account count keeps the key it had before pairs were counted, so counts carry over.
        return f"{self.keys.prefix}:{{rl:u:{digest(provider_id + ':' + username.lower())[:32]}}}"

    @staticmethod
    def _source(address: str | None) -> str:
        return digest(address or "")[:32]  # addresses are hashed like every other throttle key

    def _user_keys(self, provider_id: str, username: str, source: str | None) -> list[str]:
        base = self._user_base(provider_id, username)
        pair = f"{base}:ip:{self._source(source)}"
        return [base, f"{base}:inflight", pair, f"{pair}:inflight", f"{base}:ips"]

    def _address_keys(self, address: str) -> list[str]:
        base = f"{self.keys.prefix}:{{rl:ip:{digest(address)[:32]}}}"
        return [base, f"{base}:inflight"]

    async def start_login_attempt(
        self,
        provider_id: str,
        username: str,
        source: str | None,
        *,
        pair_limit: int,
        account_limit: int,
        address_limit: int,
        in_flight_ttl: int,
    ) -> AttemptStart:
        keys = self._user_keys(provider_id, username, source)[:4]
        if not isinstance(self.redis, RedisCluster):  # one node: both counts in one script
            address = self._address_keys(source) if source else []
            args = [pair_limit, account_limit, in_flight_ttl, address_limit]
            return _attempt(await self._start_attempt(keys=[*keys, *address], args=args))
        # Cluster: the username's slot, then the address's; an attempt the address refuses is voided.
        started = _attempt(await self._start_user(keys=keys, args=[pair_limit, account_limit, in_flight_ttl]))
        if started.state != "started" or not source:
            return started
        by_address = _attempt(
            await self._start_address(keys=self._address_keys(source), args=[address_limit, 0, in_flight_ttl])
        )
        if by_address.state != "started":
            await self._finish_user(
                keys=self._user_keys(provider_id, username, source),
                args=["void", 1, self._source(source), pair_limit, account_limit],
            )
        return by_address

    async def finish_login_attempt(
        self,
        provider_id: str,
        username: str,
        source: str | None,
        outcome: LoginOutcome,
        *,
        window: int,
        pair_limit: int,
        account_limit: int,
    ) -> LocksReached:
        keys = self._user_keys(provider_id, username, source)
        args = [outcome, window, self._source(source), pair_limit, account_limit]
        address = self._address_keys(source) if source else []
        if not isinstance(self.redis, RedisCluster):  # one node: both counts in one script
            pair, account = _pair(await self._finish_attempt(keys=[*keys, *address], args=args))
        else:
            pair, account = _pair(await self._finish_user(keys=keys, args=args))
            if address:
                await self._finish_address(keys=address, args=["failed" if outcome == "failed" else "void", window])
        return LocksReached(pair=bool(pair), account=bool(account))

    async def clear_login_failures(self, provider_id: str, username: str) -> bool:
        base = self._user_base(provider_id, username)
        # The set names the pairs to clear (every key a script touches is named, for Cluster);
        # a pair that fails between the two steps stays counted, as it would a moment later.
        pairs = sorted(_text(p) for p in await self.redis.smembers(f"{base}:ips"))
        keys = [base, f"{base}:ips", *(f"{base}:ip:{pair}" for pair in pairs)]
        return bool(await self._clear_user(keys=keys, args=pairs))

    # -- the signing key ring ----------------------------------------------------------------
    async def signing_keys(self) -> list[dict[str, Any]]:
        records = await self.redis.hgetall(self.keys.signing_keys())
        return [record for value in records.values() if (record := loads(value)) is not None]

    async def save_signing_key(self, kid: str, record: Mapping[str, Any]) -> None:
        await self.redis.hset(self.keys.signing_keys(), kid, dumps(record))

    async def drop_signing_keys(self, kids: Sequence[str]) -> None:
        if kids:
            await self.redis.hdel(self.keys.signing_keys(), *kids)

    async def lock_signing_keys(self, seconds: int) -> str | None:
        token = secrets.token_urlsafe(16)
        return token if await self.redis.set(self.keys.signing_lock(), token, nx=True, ex=seconds) else None

    async def unlock_signing_keys(self, token: str) -> None:
        await self._unlock(keys=[self.keys.signing_lock()], args=[token])

    async def signing_keys_locked(self) -> bool:
        return bool(await self.redis.exists(self.keys.signing_lock()))

    # -- request rate limits ---------------------------------------------------------------
    async def count_request(self, limit_name: str, subject: str, *, window: int) -> Hit:
        key = f"{self.keys.prefix}:{{rl:{limit_name}:{digest(subject)[:32]}}}"
        count, ttl = _pair(await self._hit(keys=[key], args=[window]))
        return Hit(count, ttl)

    # -- shared upstream re-checks -----------------------------------------------------------
    async def claim_recheck(
        self, provider_id: str, subject: str, *, not_before: float, lock_seconds: float
    ) -> RecheckClaim:
        keys = [self.keys.recheck(provider_id, subject), self.keys.recheck_lock(provider_id, subject)]
        token = secrets.token_urlsafe(16)
        reply = await self._claim_recheck(keys=keys, args=[repr(not_before), max(1, int(lock_seconds * 1000)), token])
        if not isinstance(reply, list | tuple) or len(reply) != 4:
            raise ValueError(f"unexpected store script reply {reply!r}")
        raw, checked_at, left, lock = reply
        record = loads(raw) if raw else None
        if record is not None:
            return RecheckClaim(StoredIdentity.from_json(record), float(_text(checked_at)), max(0, int(left)) / 1000)
        return RecheckClaim(lock=token if _text(lock) == token else None)

    async def finish_recheck(
        self,
        provider_id: str,
        subject: str,
        lock: str | None,
        identity: StoredIdentity | None,
        *,
        checked_at: float = 0.0,
        ttl: float = 0.0,
    ) -> bool:
        keys = [self.keys.recheck(provider_id, subject), self.keys.recheck_lock(provider_id, subject)]
        kept = identity is not None and ttl > 0
        args = [lock or "", dumps(identity.to_json()) if kept and identity else "", repr(checked_at)]
        return bool(await self._finish_recheck(keys=keys, args=[*args, max(1, int(ttl * 1000))]))

    async def forget_recheck(self, provider_id: str, subject: str) -> None:
        # One slot: a multi-key DEL is allowed on Cluster too.
        await self.redis.delete(self.keys.recheck(provider_id, subject), self.keys.recheck_lock(provider_id, subject))

    # -- redeemed identity assertions ----------------------------------------------------------
    async def claim_assertion_jti(self, issuer: str, jti: str, expires_at: float) -> bool:
        # SET NX is the single-use step; the expiry comes with it, so no record outlives its exp.
        seconds = max(1, math.ceil(expires_at - time.time()))
        return bool(await self.redis.set(self.keys.assertion_jti(issuer, jti), "1", nx=True, ex=seconds))

    async def release_assertion_jti(self, issuer: str, jti: str) -> None:
        await self.redis.delete(self.keys.assertion_jti(issuer, jti))

    # -- upstream signals ----------------------------------------------------------------------
    async def record_signal(self, provider_id: str, record: Mapping[str, Any], *, keep: int) -> None:
        key = self.keys.recent_signals(provider_id)
        async with self.redis.pipeline(transaction=True) as pipe:  # one key: MULTI works on Cluster
            pipe.lpush(key, dumps(dict(record)))
            pipe.ltrim(key, 0, max(0, keep - 1))
            await pipe.execute()

    async def recent_signals(self, provider_id: str, limit: int) -> list[dict[str, Any]]:
        raw = await self.redis.lrange(self.keys.recent_signals(provider_id), 0, max(0, limit - 1))
        return [record for record in (loads(r) for r in raw) if isinstance(record, dict)]

    # -- SCIM provisioning ---------------------------------------------------------------------
    def _scim_keys(self, tenant: str, kind: str) -> list[str]:
        k = self.keys
        return [k.scim_resources(tenant, kind), k.scim_index(tenant, kind), k.scim_indexed(tenant, kind)]

    async def save_scim_resource(
        self,
        tenant: str,
        kind: str,
        resource_id: str,
        record: Mapping[str, Any],
        index: Mapping[str, str],
        *,
        create: bool,
        expected: Mapping[str, Any] | None = None,
    ) -> Literal["ok", "conflict", "missing", "stale"]:
        entries = json.dumps([f"{attribute}\x00{value}" for attribute, value in sorted(index.items())])
        before = dumps(dict(expected)) if expected is not None else ""  # as stored: same dumps, same order
        args = [resource_id, dumps(dict(record)), "1" if create else "0", entries, before]
        reply = await self._scim_save(keys=self._scim_keys(tenant, kind), args=args)
        return _outcome(reply, ("ok", "conflict", "missing", "stale"))

    async def get_scim_resource(self, tenant: str, kind: str, resource_id: str) -> dict[str, Any] | None:
        record = loads(await self.redis.hget(self.keys.scim_resources(tenant, kind), resource_id))
        return dict(record) if record is not None else None

    async def find_scim_resource(self, tenant: str, kind: str, attribute: str, value: str) -> str | None:
        found = await self.redis.hget(self.keys.scim_index(tenant, kind), f"{attribute}\x00{value}")
        return _text(found) if found is not None else None

    async def list_scim_resources(self, tenant: str, kind: str) -> list[tuple[str, dict[str, Any]]]:
        raw = await self.redis.hgetall(self.keys.scim_resources(tenant, kind))
        return sorted((_text(k), dict(loads(v) or {})) for k, v in raw.items())

    async def delete_scim_resource(self, tenant: str, kind: str, resource_id: str) -> bool:
        return bool(await self._scim_delete(keys=self._scim_keys(tenant, kind), args=[resource_id]))


def _conforms(store: RedisStore) -> Store:
    return store  # mypy checks here that RedisStore keeps the whole protocol
