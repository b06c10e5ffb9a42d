-- A claimed scheduled message is finished (sent, or refused for good): forget it
-- and tell every client of the author how it went. Only the first worker to finish
-- it tells (two may have sent it, as one message, when a lease ran out).
-- Returns 1 finished now, 0 already finished.
local jobs, leases = KEYS[1], KEYS[2]
local sid, push, channel = ARGV[1], ARGV[2], ARGV[3]

redis.call('HDEL', leases, sid)
if redis.call('HDEL', jobs, sid) == 0 then return 0 end
if push ~= '' then redis.call('PUBLISH', channel, push) end
return 1
