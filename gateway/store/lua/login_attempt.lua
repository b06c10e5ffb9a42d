-- Take one login attempt against throttle counters, before the password is
-- checked: concurrent attempts cannot all pass a count read before it grows.
-- KEYS: counters (each expires with its window). ARGV: limit, window_s per key.
-- A limit of 0 means that counter is not checked (but still counted).
-- Returns {0, 0} allowed (every counter incremented) or {1, retry_after_s}.
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i - 1])
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
  if redis.call('INCR', key) == 1 then redis.call('EXPIRE', key, ARGV[2 * i]) end
end
return {0, 0}
