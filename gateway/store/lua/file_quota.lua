-- A user's file bytes in a fixed window (it starts with the first file after the
-- last window ended). ARGV: bytes (negative gives them back), limit, window ms.
-- Returns {1, 0} taken (or given back), {0, ms} over the limit; the window ends in ms.
local key = KEYS[1]
local n, limit, window_ms = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])

local used = tonumber(redis.call('GET', key) or '0') or 0
if n < 0 then
  -- Only within the window that took them; never below zero.
  if used > 0 then redis.call('DECRBY', key, math.min(used, -n)) end
  return {1, 0}
end
if used + n > limit then
  local left = redis.call('PTTL', key)
  if left < 0 then  -- set by hand without an expiry: the window starts now
    redis.call('PEXPIRE', key, window_ms)
    left = window_ms
  end
  return {0, left}
end
redis.call('INCRBY', key, n)
if redis.call('PTTL', key) < 0 then redis.call('PEXPIRE', key, window_ms) end
return {1, 0}
