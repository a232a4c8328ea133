"""The Lua scripts of the Redis store: each one atomic step that one command cannot do.

Each script touches only the keys it is given (a Cluster runs it on the node that owns them; keys
used together share a hash tag). Time is the server's (`TIME`, microseconds), so replicas with
skewed clocks agree. Numbers that Python reads back travel as strings: Lua numbers are doubles, and
an integer reply would truncate a fraction.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Script:
    """A Lua script and its SHA1 (how Redis names a cached script; not a security use)."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest())


# Redis 5 and 6 allow writes after TIME only with effects replication (the default from 5 on).
_PRELUDE = """
if redis.replicate_commands then redis.replicate_commands() end
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function bump(version_key, now, ttl_ms)
  local version = math.max((tonumber(redis.call('GET', version_key)) or 0) + 1, now)
  local text = string.format('%.0f', version)
  redis.call('SET', version_key, text, 'PX', ttl_ms)
  return text
end
"""


def _script(body: str) -> Script:
    return Script(_PRELUDE + body)


# Create the counter with its TTL, or add to it keeping its TTL. The result is read back as a string:
# Lua numbers are doubles and would round counters beyond 2^53.
INCR = Script(
    """
if redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') then return ARGV[1] end
redis.call('INCRBY', KEYS[1], ARGV[1])
return redis.call('GET', KEYS[1])
"""
)

# GET and DEL in one step, for servers before 6.2 (no GETDEL).
TAKE = Script(
    """
local value = redis.call('GET', KEYS[1])
if value then redis.call('DEL', KEYS[1]) end
return value
"""
)

# GCRA. KEYS: the theoretical arrival time (µs). ARGV: interval (µs per request), burst.
# Returns {allowed, retry_after µs, remaining, reset µs}.
RATE_LIMIT = _script(
    """
local now = now_us()
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local allowed_from = new_tat - burst * interval
if now < allowed_from then
  return {0, string.format('%.17g', allowed_from - now), 0, string.format('%.17g', tat - now)}
end
local ttl_ms = math.max(1, math.ceil((new_tat - now) / 1000))
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl_ms)
return {1, '0', math.floor((now - allowed_from) / interval + 1e-9), string.format('%.17g', new_tat - now)}
"""
)

# Member sets. KEYS: the members (sorted set scored by expiry, ms), the version.
# ARGV: member, ttl ms, most members, version ttl ms. Returns the new version.
ADD_MEMBER = _script(
    """
local now = now_us()
local now_ms = math.floor(now / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return redis.error_reply('AUTHCAR_FULL the member set is full')
end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], last[2])
return bump(KEYS[2], now, ARGV[4])
"""
)
# ARGV: member, version ttl ms. An emptied set's key goes (Redis drops empty sorted sets).
REMOVE_MEMBER = _script(
    """
local now = now_us()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', math.floor(now / 1000))
redis.call('ZREM', KEYS[1], ARGV[1])
return bump(KEYS[2], now, ARGV[2])
"""
)
# Returns {version, now ms, {member, expiry ms, ...}}: one consistent snapshot.
MEMBERS = _script(
    """
local now_ms = string.format('%.0f', math.floor(now_us() / 1000))
local version = redis.call('GET', KEYS[2]) or '0'
return {version, now_ms, redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now_ms, '+inf', 'WITHSCORES')}
"""
)

# Sliding records: a hash {v: value, idle: ms, ends: absolute end in ms}, expiring at
# min(last read + idle, ends). ARGV: value, idle ms, max age ms.
SET_SLIDING = _script(
    """
local now_ms = math.floor(now_us() / 1000)
local ends = now_ms + tonumber(ARGV[3])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'idle', ARGV[2], 'ends', string.format('%.0f', ends))
redis.call('PEXPIREAT', KEYS[1], string.format('%.0f', math.min(now_ms + tonumber(ARGV[2]), ends)))
return 1
"""
)
GET_SLIDING = _script(
    """
local record = redis.call('HMGET', KEYS[1], 'v', 'idle', 'ends')
if not record[1] then return false end
local now_ms = math.floor(now_us() / 1000)
local expires = math.min(now_ms + tonumber(record[2]), tonumber(record[3]))
if expires <= now_ms then
  redis.call('DEL', KEYS[1])
  return false
end
redis.call('PEXPIREAT', KEYS[1], string.format('%.0f', expires))
return record[1]
"""
)
