-- Cancel one scheduled message of its author, unless a worker has claimed it: the
-- claim commits it to being sent, so of a cancel and a send exactly one wins.
-- Returns 1 cancelled (and told to every client of the author), 0 no such sid
-- (never, someone else's, or gone), -1 claimed: being sent or sent.
local jobs, leases = KEYS[1], KEYS[2]
local sid, push, channel = ARGV[1], ARGV[2], ARGV[3]

if redis.call('HEXISTS', leases, sid) == 1 then return -1 end
if redis.call('HDEL', jobs, sid) == 0 then return 0 end
redis.call('PUBLISH', channel, push)
return 1
