"""The limiter's atomic scripts: Lua for Redis, with the Python twins of ``window.py`` for memory.

One call per phase checks and updates every limit of a request (all keys of one tenant share a
hash tag, so a call stays on one Redis Cluster slot). ``now`` is bound by the backend's prelude:
Redis ``TIME`` in production, the injected clock's time in tests (see ``gateway.state.redis``).
Numbers written to Redis are integers (microsecond scores, token counts); Lua's ``tostring`` is never
used on them, because it would round 16-digit scores.
"""

from __future__ import annotations

from gateway.ratelimit import window
from gateway.state.base import Script

_COMMON = """
local now_us = math.floor(now * 1000000 + 0.5)
local function ceil_ms(us) if us <= 0 then return 0 end return math.ceil(us / 1000) end
"""

_ACQUIRE = _COMMON + """
local token, force = ARGV[1], ARGV[2] == '1'
local window, lease = tonumber(ARGV[3]), tonumber(ARGV[4])
local cutoff = now_us - window

local function trim_tokens(zkey, hkey)
  local old = redis.call('ZRANGEBYSCORE', zkey, '-inf', cutoff)
  local freed = 0
  for i = 1, #old, 1000 do
    local part = {unpack(old, i, math.min(i + 999, #old))}
    local ws = redis.call('HMGET', hkey, unpack(part))
    for j = 1, #ws do freed = freed + (tonumber(ws[j]) or 0) end
    redis.call('HDEL', hkey, unpack(part))
  end
  if #old > 0 then redis.call('ZREMRANGEBYSCORE', zkey, '-inf', cutoff) end
  if redis.call('EXISTS', zkey) == 0 then redis.call('DEL', hkey) return 0 end
  if freed > 0 then return redis.call('HINCRBY', hkey, '~sum', -freed) end
  return tonumber(redis.call('HGET', hkey, '~sum') or '0')
end

local function token_retry(zkey, hkey, need)
  local start, acc = 0, 0
  while true do
    local page = redis.call('ZRANGE', zkey, start, start + 99, 'WITHSCORES')
    if #page == 0 then return 0 end
    local members = {}
    for i = 1, #page, 2 do members[#members + 1] = page[i] end
    local ws = redis.call('HMGET', hkey, unpack(members))
    for i = 1, #members do
      acc = acc + (tonumber(ws[i]) or 0)
      if acc >= need then return tonumber(page[2 * i]) + window - now_us end
    end
    start = start + 100
  end
end

local function check(e)
  if e.kind == 'C' then
    redis.call('ZREMRANGEBYSCORE', e.key, '-inf', now_us)
    e.used = redis.call('ZCARD', e.key)
  elseif e.kind == 'R' then
    redis.call('ZREMRANGEBYSCORE', e.key, '-inf', cutoff)
    e.used = redis.call('ZCARD', e.key)
  else
    e.used = trim_tokens(e.key, e.hkey)
  end
  e.over = e.kind ~= 'P' and e.used + e.weight > e.limit
  e.retry = 0
  if not e.over or e.kind == 'C' then return end
  if e.weight > e.limit then
    e.retry = -1
  elseif e.kind == 'R' then
    local idx = e.used + e.weight - e.limit - 1
    local hit = redis.call('ZRANGE', e.key, idx, idx, 'WITHSCORES')
    e.retry = tonumber(hit[2]) + window - now_us
  else
    e.retry = token_retry(e.key, e.hkey, e.used + e.weight - e.limit)
  end
end

local function commit(e)
  if e.kind == 'P' then return end
  if e.kind == 'C' then
    redis.call('ZADD', e.key, now_us + lease, token)
    redis.call('PEXPIRE', e.key, math.floor(lease / 1000) + 1000)
    e.used = e.used + 1
    return
  end
  redis.call('ZADD', e.key, now_us, token)
  local ttl = math.floor(window / 1000) + 1000
  redis.call('PEXPIRE', e.key, ttl)
  if e.kind == 'R' then e.used = e.used + 1 return end
  redis.call('HSET', e.hkey, token, e.weight)
  e.used = redis.call('HINCRBY', e.hkey, '~sum', e.weight)
  redis.call('PEXPIRE', e.hkey, ttl)
end

local function reset_ms(e)
  if e.kind == 'C' then return 0 end
  local last = redis.call('ZRANGE', e.key, -1, -1, 'WITHSCORES')
  if #last == 0 then return 0 end
  return ceil_ms(tonumber(last[2]) + window - now_us)
end

local entries, ki, ok, retry = {}, 1, true, 0
for i = 5, #ARGV, 3 do
  local e = {kind = ARGV[i], limit = tonumber(ARGV[i + 1]), weight = tonumber(ARGV[i + 2]), key = KEYS[ki]}
  ki = ki + 1
  if e.kind == 'T' or e.kind == 'P' then e.hkey = KEYS[ki] ki = ki + 1 end
  check(e)
  if e.over then
    ok = false
    if e.retry < 0 or retry < 0 then retry = -1 elseif e.retry > retry then retry = e.retry end
  end
  entries[#entries + 1] = e
end
local status = 1
if not ok then if force then status = 2 else status = 0 end end
if status > 0 then for _, e in ipairs(entries) do commit(e) end end
local out = {status, retry < 0 and -1 or ceil_ms(retry)}
for _, e in ipairs(entries) do
  out[#out + 1] = e.used
  out[#out + 1] = reset_ms(e)
  out[#out + 1] = e.over and 1 or 0
end
return out
"""

_RELEASE = """
local token, ki = ARGV[1], 1
for i = 2, #ARGV, 2 do
  if ARGV[i] == 'C' then
    redis.call('ZREM', KEYS[ki], token)
    ki = ki + 1
  else
    local hkey = KEYS[ki + 1]
    ki = ki + 2
    local old = redis.call('HGET', hkey, token)
    if old then
      local delta = tonumber(ARGV[i + 1]) - tonumber(old)
      redis.call('HSET', hkey, token, ARGV[i + 1])
      if delta ~= 0 then redis.call('HINCRBY', hkey, '~sum', delta) end
    end
  end
end
return 1
"""

_RENEW = _COMMON + """
local lease, i, renewed = tonumber(ARGV[1]), 2, 0
for _, key in ipairs(KEYS) do
  local n = tonumber(ARGV[i])
  for j = i + 1, i + n do
    if redis.call('ZSCORE', key, ARGV[j]) then
      redis.call('ZADD', key, now_us + lease, ARGV[j])
      renewed = renewed + 1
    end
  end
  i = i + 1 + n
  if redis.call('EXISTS', key) == 1 then redis.call('PEXPIRE', key, math.floor(lease / 1000) + 1000) end
end
return renewed
"""

ACQUIRE = Script(name="ratelimit_acquire", lua=_ACQUIRE, local=window.acquire)
RELEASE = Script(name="ratelimit_release", lua=_RELEASE, local=window.release)
RENEW = Script(name="ratelimit_renew", lua=_RENEW, local=window.renew)
