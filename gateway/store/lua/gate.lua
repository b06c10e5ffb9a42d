-- May this user send now? One atomic step on the user's keys: the ban, then (for a
-- send that counts) the rate window. Returns
--   {1, 0}       yes, and one message of the window's quota was taken
--   {0, 0}       yes, nothing taken (it does not count, or this cid was counted before)
--   {-1, ends}   banned until that time (ms; 0 = until an operator lifts it)
--   {-2, ms}     over the limit; the window ends in ms
local ban_key, quota_key, cid_key = KEYS[1], KEYS[2], KEYS[3]
local now, limit, window_ms = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cid_ttl_ms, has_cid = ARGV[4], ARGV[5] == '1'

local ban = redis.call('GET', ban_key)
if ban then
  local ends = tonumber(ban) or 0
  if ends == 0 or ends > now then return {-1, ends} end
end
if limit <= 0 then return {0, 0} end
if has_cid and redis.call('EXISTS', cid_key) == 1 then return {0, 0} end
local used = tonumber(redis.call('GET', quota_key) or '0') or 0
if used >= limit then
  local left = redis.call('PTTL', quota_key)
  if left < 0 then  -- set by hand without an expiry: the window starts now
    redis.call('PEXPIRE', quota_key, window_ms)
    left = window_ms
  end
  return {-2, left}
end
if redis.call('INCR', quota_key) == 1 or redis.call('PTTL', quota_key) < 0 then
  redis.call('PEXPIRE', quota_key, window_ms)
end
if has_cid then redis.call('SET', cid_key, '1', 'PX', cid_ttl_ms) end
return {1, 0}
