-- Create a room, owned by its creator (its first member). Names are unique
-- ignoring case: the room's keys are its lower-cased name. Returns 1, or 0 if taken.
local room_key, members_key = KEYS[1], KEYS[2]
local owner, private, now = ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', room_key) == 1 then return 0 end
redis.call('HSET', room_key, 'owner', owner, 'private', private, 'created', now)
redis.call('ZADD', members_key, now, owner)
return 1
