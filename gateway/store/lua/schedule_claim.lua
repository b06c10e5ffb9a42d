-- A worker claims one due scheduled message: it gets the message and a lease, unless
-- another worker holds a lease that has not ended. Once claimed, a message is
-- committed to being sent: cancel refuses it, and a worker taking over an ended
-- lease sends it again with the same client id (stored once).
-- Returns {1, job, tries, lease_end} claimed, {0, '', 0, 0} gone (sent or
-- cancelled), {-1, '', tries, lease_end} held by another worker.
local jobs, leases = KEYS[1], KEYS[2]
local sid, now, lease_ms, worker = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]

local job = redis.call('HGET', jobs, sid)
if not job then
  redis.call('HDEL', leases, sid)
  return {0, '', 0, 0}
end
local tries = 0
local lease = redis.call('HGET', leases, sid)
if lease then
  local ends, n = string.match(lease, '^(%d+) (%d+)')
  if ends and tonumber(ends) > now then return {-1, '', tonumber(n), tonumber(ends)} end
  tries = tonumber(n) or 0
end
tries = tries + 1
local ends = now + lease_ms
redis.call('HSET', leases, sid, string.format('%d %d %s', ends, tries, worker))
return {1, job, tries, ends}
