"""Lua for the sign-in throttle and request rate limits (see :mod:`broker.security.throttle`).

Each script touches the keys of one hash tag only, so it runs unchanged on Cluster, except
``START_ATTEMPT`` and ``FINISH_ATTEMPT``, which a single node runs in place of two each.
"""

# KEYS: failures, in flight (one slot: both carry the same hash tag). ARGV: limit, window, in-flight TTL.
# Returns {1} started, {0, ttl} locked, {2} busy (wait for attempts in flight).
START = """
local failures = tonumber(redis.call('GET', KEYS[1]) or '0')
if failures >= tonumber(ARGV[1]) then return {0, redis.call('TTL', KEYS[1])} end
if failures + tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[1]) then return {2, 0} end
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {1, 0}
"""

# KEYS as above. ARGV: 'failed' | 'void', window.
FINISH = """
if tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then redis.call('DECR', KEYS[2]) end
if ARGV[1] == 'failed' then
  if redis.call('INCR', KEYS[1]) == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
end
"""

# KEYS: account failures, account in flight, pair failures, pair in flight (one slot: the
# username's hash tag). ARGV: pair limit, account limit, in-flight TTL.
# Returns {1, 0} started, {0, ttl} locked, {2, 0} busy (wait for attempts in flight).
# The username's counts (KEYS and ARGV as in START_USER): returns a lock at once, and leaves
# ``busy`` true when attempts in flight fill either count. Shared by START_USER and START_ATTEMPT.
_USER_COUNTS = """
local account = tonumber(redis.call('GET', KEYS[1]) or '0')
local pair = tonumber(redis.call('GET', KEYS[3]) or '0')
local ttl = -2
if account >= tonumber(ARGV[2]) then ttl = redis.call('TTL', KEYS[1]) end
if pair >= tonumber(ARGV[1]) then ttl = math.max(ttl, redis.call('TTL', KEYS[3])) end
if ttl ~= -2 then return {0, ttl} end
local busy = account + tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[2])
  or pair + tonumber(redis.call('GET', KEYS[4]) or '0') >= tonumber(ARGV[1])
"""

# Starts the attempt in every in-flight count of KEYS (the even ones), or returns busy.
_START_IN_FLIGHT = """
if busy then return {2, 0} end
for i = 2, #KEYS, 2 do
  redis.call('INCR', KEYS[i])
  redis.call('EXPIRE', KEYS[i], ARGV[3])
end
return {1, 0}
"""

START_USER = _USER_COUNTS + _START_IN_FLIGHT

# KEYS as in START_USER, then the set of the username's pair digests. ARGV: 'failed' |
# 'cleared' | 'void', window, pair digest, pair limit, account limit.
# Returns {pair lock just reached, account lock just reached}.
FINISH_USER = """
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

# One node (standalone, Sentinel): a password attempt's counts in one step each, the username's
# and the address's together (their hash tags differ, so Cluster runs the scripts above in turn).
# KEYS as in START_USER, then (if there is an address) address failures, address in flight.
# ARGV: pair limit, account limit, in-flight TTL, address limit. Returns as START_USER: a lock on
# the username is reported before one on the address, and either before busy.
START_ATTEMPT = (
    _USER_COUNTS
    + """
if KEYS[5] then
  local failures = tonumber(redis.call('GET', KEYS[5]) or '0')
  if failures >= tonumber(ARGV[4]) then return {0, redis.call('TTL', KEYS[5])} end
  busy = busy or failures + tonumber(redis.call('GET', KEYS[6]) or '0') >= tonumber(ARGV[4])
end
"""
    + _START_IN_FLIGHT
)

# KEYS as in FINISH_USER, then (if there is an address) address failures, address in flight.
# ARGV as in FINISH_USER: the address counts a failure only for 'failed'. Returns as FINISH_USER.
FINISH_ATTEMPT = (
    """
if KEYS[6] then
  if tonumber(redis.call('GET', KEYS[7]) or '0') > 0 then redis.call('DECR', KEYS[7]) end
  if ARGV[1] == 'failed' then
    if redis.call('INCR', KEYS[6]) == 1 then redis.call('EXPIRE', KEYS[6], ARGV[2]) end
  end
end
"""
    + FINISH_USER
)

# KEYS: account failures, the set of pair digests, then the pair counts named in ARGV (one
# digest each, in order). Returns how many counts held failures.
UNLOCK = """
local cleared = redis.call('DEL', KEYS[1])
for i, pair in ipairs(ARGV) do
  cleared = cleared + redis.call('DEL', KEYS[i + 2])
  redis.call('SREM', KEYS[2], pair)
end
return cleared
"""

# KEYS: one counter. ARGV: window. Returns {count, seconds left}.
HIT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {n, redis.call('TTL', KEYS[1])}
"""
