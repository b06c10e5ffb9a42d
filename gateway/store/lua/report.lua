-- One report of a user, atomic on the reported user's keys: count it once per
-- reporter, ban at the threshold (and start again from zero reports), and warn
-- every client of the user. Returns {counted (1|0), reports, banned_until (0 none)}.
local ban_key, reports_key = KEYS[1], KEYS[2]
local reporter, entry = ARGV[1], ARGV[2]
local threshold, ban_ms, now = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local reports_ttl_ms, channel = tonumber(ARGV[6]), ARGV[7]

local ban = redis.call('GET', ban_key)
if ban then
  local ends = tonumber(ban) or 0
  if ends == 0 or ends > now then return {0, 0, ends} end
end
if redis.call('HSETNX', reports_key, reporter, entry) == 0 then
  return {0, redis.call('HLEN', reports_key), 0}
end
local reports = redis.call('HLEN', reports_key)
local ends = 0
if reports >= threshold then
  ends = now + ban_ms
  redis.call('SET', ban_key, ends, 'PXAT', ends)
  redis.call('DEL', reports_key)
else
  redis.call('PEXPIRE', reports_key, reports_ttl_ms)
end
local banned = 'null'
if ends > 0 then banned = tostring(ends) end
redis.call('PUBLISH', channel, '{"type":"warning","reports":' .. reports ..
  ',"threshold":' .. threshold .. ',"banned_until":' .. banned .. '}')
return {1, reports, ends}
