-- Add one scheduled message to its author's keys, unless they have too many
-- waiting; tell every client of the author. The caller wrote the due index entry
-- first (a slot of its own) and removes it again if this refuses.
-- Returns 1 added, 0 the sid is taken (pick another), -1 the author is at the max.
local jobs = KEYS[1]
local sid, job, max_pending = ARGV[1], ARGV[2], tonumber(ARGV[3])
local push, channel = ARGV[4], ARGV[5]

if redis.call('HLEN', jobs) >= max_pending then return -1 end
if redis.call('HSETNX', jobs, sid, job) == 0 then return 0 end
redis.call('PUBLISH', channel, push)
return 1
