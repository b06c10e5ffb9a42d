-- Check login throttle counters and reserve an attempt, in one step, before the
-- password is checked: concurrent guesses cannot all pass a count read before
-- it grows. KEYS: counters (each expires with its window).
-- ARGV, three per key: limit (0: not checked), window_s, mode. Mode 'reserve'
-- counts this attempt now (it is given back if it turns out right); 'check'
-- only checks (the caller counts a wrong password afterwards).
-- Returns {0, 0} allowed or {1, retry_after_s}.
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[3 * i - 2])
  if limit > 0 then
    local n = tonumber(redis.call('GET', key) or '0')
    if n >= limit then
      local ttl = redis.call('TTL', key)
      if ttl < 1 then ttl = 1 end
      return {1, ttl}
    end
  end
end
for i, key in ipairs(KEYS) do
  if ARGV[3 * i] == 'reserve' and redis.call('INCR', key) == 1 then
    redis.call('EXPIRE', key, ARGV[3 * i - 1])
  end
end
return {0, 0}
